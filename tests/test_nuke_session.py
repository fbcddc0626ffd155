"""The node inside an artist's working session: Nuke's own render going on, the colorspaces of
the script's OCIO config, the undo stack, the Viewer's hold of a short sequence (issue 19)."""

from __future__ import annotations

import pytest
from nuke_fake.support import (  # noqa: F401 - fixtures
    cluster_env,
    fake_nuke,
    load_image_workflow,
    make_run_node,
    wait_run,
    write_json,
)

pytestmark = pytest.mark.timeout(60)


def test_execute_during_the_artists_own_render_waits_for_it(fake_nuke, cluster_env, tmp_path):
    """Item 10: the input render ran inside the artist's F7 render (Nuke runs queued calls
    between the frames it renders) and failed with "already executing"."""
    import nuke

    import comfy_cluster_nuke.run as run_mod

    artist_write = nuke.nodes.Write(file=str(tmp_path / "comp" / "comp.####.png"), file_type="png", create_directories=True)
    artist_write.setInput(0, nuke.nodes.Constant())
    node = make_run_node(fake_nuke, write_json(tmp_path / "wf.json", load_image_workflow()), str(tmp_path / "out"), last=2)
    fake_nuke.press(node, "execute")
    run = run_mod.current(node)

    def held_at_first_frame(write: str, frame: int) -> None:
        # The artist's render is at its first frame until the run has asked to render.
        if write == artist_write.fullName() and frame == 1:
            fake_nuke.pump_until(
                lambda: "waiting for Nuke's render" in node["status"].value() or fake_nuke.violations() or run.finished.is_set(),
                what="the run to reach its input render",
            )

    fake_nuke.on_render_frame(held_at_first_frame)
    nuke.execute(artist_write, 1, 3)  # F7: on the main thread, pumping Nuke's event loop
    fake_nuke.on_render_frame(None)
    assert fake_nuke.violations() == []
    run = wait_run(fake_nuke, node)
    assert run.error is None, run.error
    assert [r[0] for r in fake_nuke.renders()] == [artist_write.fullName(), f"{node.name()}.Write1"]
