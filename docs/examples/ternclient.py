#!/usr/bin/env python3
"""Script tern over gRPC from Python: list IP pools, switch natOutgoing.

    ternclient.py --server 10.0.0.1:5443 --ca ca.pem --cert admin.pem --key admin-key.pem
    ternclient.py ... --nat off default-ipv4-ippool

Needs grpcio and grpcio-tools (Debian: python3-grpcio python3-grpc-tools; or pip).
The stubs are generated from tern's proto/ directory on the fly.
"""
import argparse
import importlib
import json
import os
import sys
import tempfile

import grpc
from google.protobuf.json_format import MessageToDict


def load_stubs(proto_dir):
    """Compile proto/tern/v1/*.proto into a temporary package and import it."""
    from grpc_tools import protoc

    out = tempfile.mkdtemp(prefix="tern-stubs-")
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    protos = [os.path.join(proto_dir, "tern", "v1", f) for f in ("resources.proto", "api.proto")]
    rc = protoc.main(["protoc", f"-I{proto_dir}", f"-I{include}", f"--python_out={out}",
                      f"--grpc_python_out={out}", *protos])
    if rc != 0:
        sys.exit(f"protoc failed ({rc})")
    sys.path.insert(0, out)
    return importlib.import_module("tern.v1.api_pb2"), importlib.import_module("tern.v1.api_pb2_grpc")


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server", default=os.environ.get("TERN_SERVER", "127.0.0.1:5443"))
    ap.add_argument("--ca", default=os.environ.get("TERN_CA"))
    ap.add_argument("--cert", default=os.environ.get("TERN_CERT"))
    ap.add_argument("--key", default=os.environ.get("TERN_KEY"))
    ap.add_argument("--proto", default=os.path.join(here, "..", "..", "proto"))
    ap.add_argument("--nat", nargs=2, metavar=("on|off", "POOL"))
    args = ap.parse_args()
    api_pb2, api_grpc = load_stubs(os.path.abspath(args.proto))

    def read(path):
        with open(path, "rb") as f:
            return f.read()

    creds = grpc.ssl_channel_credentials(
        root_certificates=read(args.ca), private_key=read(args.key), certificate_chain=read(args.cert))
    with grpc.secure_channel(args.server, creds) as channel:
        api = api_grpc.ResourceServiceStub(channel)
        if args.nat:
            on = {"on": True, "off": False}[args.nat[0]]
            patch = json.dumps({"spec": {"natOutgoing": on}})
            try:
                written = api.Patch(api_pb2.PatchRequest(kind="IPPool", name=args.nat[1], patch=patch))
            except grpc.RpcError as e:
                sys.exit(f"{e.code().name}: {e.details()}")
            # A write's response names every field the controller stored without acting on it.
            for w in written.warnings:
                print(f"Warning: {w.field}: {w.message}", file=sys.stderr)
            print(f"Successfully patched 1 'IPPool' resource")
        for pool in api.List(api_pb2.ListRequest(kind="IPPool")).items:
            spec = MessageToDict(pool.spec)
            print(f"{pool.metadata.name}\t{spec['cidr']}\tnatOutgoing={str(spec.get('natOutgoing', False)).lower()}")


if __name__ == "__main__":
    main()
