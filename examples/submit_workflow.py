"""Submit one workflow to the configured cluster, print its progress, download the result.

    export NUKE_COMFYUI_SERVERS='[{"name": "gpu1", "host": "192.168.1.187", "port": 8188}]'
    python examples/submit_workflow.py workflow_api.json renders/ [--input 10=plate.png]

(cmd.exe: ``set NUKE_COMFYUI_SERVERS=[{"name": "gpu1", "host": "192.168.1.187", "port": 8188}]``
without quotes around the value; PowerShell:
``$env:NUKE_COMFYUI_SERVERS = '[{"name": "gpu1", "host": "192.168.1.187", "port": 8188}]'``.)

Without a cluster at hand, start one mock server in another terminal first (it listens on
127.0.0.1:8188, where the library looks when NUKE_COMFYUI_SERVERS is not set), then, from the
repository folder:

    comfy-cluster mock-server
    python examples/submit_workflow.py examples/invert_workflow_api.json renders --input 10=examples/plate.0001.png
    python examples/submit_workflow.py examples/sleep_workflow_api.json renders
"""

import argparse
import sys

import comfy_cluster


def show(event: comfy_cluster.JobEvent) -> None:
    if event.kind == "progress":
        print(f"  {event.server}: node {event.node} {event.value:.0f}/{event.max:.0f}")
    elif event.kind == "retrying":
        print(f"  moved from {event.from_server} to {event.to_server}: {event.reason}")
    else:
        print(f"  {event.kind} on {event.server}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workflow", help="API-format workflow JSON")
    ap.add_argument("out", help="folder for the results")
    ap.add_argument("--input", action="append", default=[], metavar="NODE=FILE", help="image for a LoadImage node")
    args = ap.parse_args()
    inputs = dict(item.split("=", 1) for item in args.input)
    try:
        with comfy_cluster.ServerPool.from_env() as pool:
            for s in pool.status():
                print(f"{s.name:<16} {'online' if s.online else 'offline':<8} queue {s.queue_running}+{s.queue_pending} {s.error or ''}")
            job = pool.submit(args.workflow, inputs=inputs, on_event=show)
            result = job.result()
            for path in job.download(args.out):
                print(path)
            print(f"done on {result.server} in {result.seconds:.1f} s after {result.attempts} attempt(s)")
    except comfy_cluster.ComfyClusterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
