"""A model container written as Clipper's example containers are (its
containers/python/sum_container.py's shape): it imports Clipper's Python ``rpc`` module and
learns everything from CLIPPER_* variables. Run by tests/compat/test_clipper_container_api.py
and, in an image of its own, by tests/docker/test_clipper_era_scripts.py."""
import rpc


class SumContainer(rpc.ModelContainerBase):
    def __init__(self, path, input_type):
        self.path, self.input_type = path, input_type

    def predict_doubles(self, inputs):
        if any(len(item) == 0 for item in inputs):
            raise ValueError("an empty input has no sum here")
        return [str(sum(item)) for item in inputs]

    def predict_strings(self, inputs):
        return ["%s:%s:%d" % (self.path, self.input_type, len(item)) for item in inputs]


if __name__ == "__main__":
    rpc_service = rpc.RPCService()
    model = SumContainer(rpc_service.get_model_path(), rpc_service.get_input_type())
    rpc_service.start(model)
