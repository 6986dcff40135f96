"""A model container written as Clipper's example containers are (its
containers/python/sum_container.py's shape; its framework containers' use of
``rpc.string_to_input_type``): it imports Clipper's Python ``rpc`` module and learns
everything from CLIPPER_* variables. With ``--by-hand NAME PORT`` it reads none and sets the
service's attributes itself, as Clipper's rpc_test_container.py did. Run by
tests/compat/test_clipper_container_api.py and, in an image of its own, by
tests/docker/test_clipper_era_scripts.py."""
import sys

import rpc


class SumContainer(rpc.ModelContainerBase):
    def __init__(self, path, input_type):
        self.path, self.input_type = path, input_type
        self.input_code = rpc.string_to_input_type(input_type)

    def predict_doubles(self, inputs):
        if any(len(item) == 0 for item in inputs):
            raise ValueError("an empty input has no sum here")
        return [str(sum(item)) for item in inputs]

    def predict_strings(self, inputs):
        return ["%s:%s:%d:%d" % (self.path, self.input_type, self.input_code, len(item)) for item in inputs]


if __name__ == "__main__":
    if sys.argv[1:2] == ["--by-hand"]:
        rpc_service = rpc.RPCService(collect_metrics=False, read_config=False)
        rpc_service.model_name = sys.argv[2]
        rpc_service.model_version = 1
        rpc_service.host = "127.0.0.1"
        rpc_service.port = int(sys.argv[3])
        rpc_service.input_type = "doubles"
    else:
        rpc_service = rpc.RPCService()
    model = SumContainer(rpc_service.get_model_path(), rpc_service.get_input_type())
    rpc_service.start(model)
