"""meshcore: a service-mesh data plane (HBONE tunnels over mutual TLS, Istio
authorization). `meshcore demo` runs a local mesh; `meshcore node` is the per-node
proxy; `meshcore waypoint` the L7 proxy; `meshcore ca` manages the built-in CA; `meshcore policy` checks and explains
authorization policies."""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from meshcore.errors import MeshcoreError


def _demo(args: argparse.Namespace) -> int:
    from meshcore.demo import main
    return main(keep=args.keep, directory=args.dir)


# the module that adds each command's parser, in the order `meshcore --help` lists them
COMMANDS = {"ca": "meshcore.identity.cli", "node": "meshcore.node.cli", "policy": "meshcore.policy.cli",
            "waypoint": "meshcore.waypoint.cli"}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Every command's parser; with `command`, only that one's besides `demo`: a command's
    module imports what it runs (the node proxy does not load the waypoint's L7 stack,
    about 5 MB, nor the policy tools)."""
    parser = argparse.ArgumentParser(prog="meshcore", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=_version())
    # every command in the usage line, also when only one command's parser is built
    sub = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(("demo", *COMMANDS)) + "}")
    demo = sub.add_parser("demo", help="run a local mesh (CA, two node proxies, workloads) and show what it does",
                          description="Start a real local mesh of separate processes on loopback: a built-in "
                                      "CA, two node proxies, workloads; send allowed, denied and non-mesh "
                                      "traffic; report what each node saw, metrics and access logs; stop.")
    demo.add_argument("--keep", action="store_true", help="leave the mesh running until Ctrl-C")
    demo.add_argument("--dir", help="keep the mesh's files (CA, config, logs) here instead of a temporary folder")
    demo.set_defaults(func=_demo)
    for name, module in COMMANDS.items():
        if command is None or command == name:
            importlib.import_module(module).add_parser(sub)
    return parser


def _command(argv: list[str]) -> str | None:
    """The subcommand named on the command line (its first word that is not an option),
    if it is one of COMMANDS."""
    word = next((a for a in argv if not a.startswith("-")), None)
    return word if word in COMMANDS else None


def _version() -> str:
    from meshcore import __version__
    return f"meshcore {__version__}"


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    parser = build_parser(_command(argv))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except MeshcoreError as exc:
        # the same prefix argparse uses for its own errors: `meshcore <command>: error: ...`
        command = " ".join(filter(None, (args.command, getattr(args, "ca_command", None),
                                         getattr(args, "policy_command", None))))
        print(f"meshcore {command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # the reader went away (`meshcore policy check ... | head`): nothing more to say
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
