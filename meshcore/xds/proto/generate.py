"""Regenerate the *_pb2.py modules from the .proto files beside this one (needs
grpcio-tools; the generated modules are committed, so installing meshcore does not):

    python -m meshcore.xds.proto.generate
"""
import pathlib
import sys

from grpc_tools import protoc

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[2]


def main() -> int:
    import grpc_tools
    well_known = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    protos = sorted(str(p.relative_to(ROOT)) for p in HERE.glob("*.proto"))
    return protoc.main(["protoc", f"-I{ROOT}", f"-I{well_known}", f"--python_out={ROOT}",
                        f"--pyi_out={ROOT}", *protos])


if __name__ == "__main__":
    sys.exit(main())
