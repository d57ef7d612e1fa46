"""Generated gRPC stubs: do not edit; run `python -m serving.gen_proto`."""
