"""``load_adapters`` on malformed adapter files: every bad field, and every unreadable file, gets
one ``ValueError`` naming the file and the field; values the layer's constructor refuses are
refused on load too (issue 18, item 5)."""
import json

import pytest
import torch
import torch.nn as nn

import litelora_fast as llf
from litelora_fast.models.adapter_file_checks import AdapterFileError


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.q = nn.Linear(6, 5)
        self.head = nn.Linear(5, 2)

    def forward(self, x):
        return self.head(self.q(x))


def _saved(tmp_path, gate="per_adapter"):
    net = Net()
    llf.inject(net, ["q"], rank=2, alpha=4, gate=gate, num_adapters=2, modules_to_save=["head"])
    return llf.save_adapters(net, tmp_path / "saved")


def _edit(path, change):
    config = json.loads((path / "adapters.json").read_text())
    config = change(config) or config
    (path / "adapters.json").write_text(json.dumps(config))


def _adapter(i=0, layer="q"):
    return lambda c: c["layers"][layer]["adapters"][i]


def _set(getter, key, value):
    def change(config):
        getter(config)[key] = value
    return change


def _drop(getter, key):
    def change(config):
        del getter(config)[key]
    return change


LAYER = lambda c: c["layers"]["q"]   # noqa: E731
A0 = _adapter(0)
CASES = {
    "a JSON list": (lambda c: [c], "the top level must be a JSON object, got a JSON array"),
    "a JSON string": (lambda c: "layers", "the top level must be a JSON object"),
    "another format": (_set(lambda c: c, "format", "peft/1"), "format is 'peft/1'"),
    "no layers": (_drop(lambda c: c, "layers"), "layers is missing"),
    "layers a list": (_set(lambda c: c, "layers", [1]), "layers must be a non-empty object"),
    "layers empty": (_set(lambda c: c, "layers", {}), "layers must be a non-empty object"),
    "modules_to_save a string": (_set(lambda c: c, "modules_to_save", "head"),
                                 "modules_to_save must be a list of module names"),
    "a layer record a list": (_set(lambda c: c["layers"], "q", [1, 2]),
                              r"layers\['q'\] must be an object, got array"),
    "in_features a string": (_set(LAYER, "in_features", "6"),
                             r"layers\['q'\]\.in_features must be a positive int"),
    "no out_features": (_drop(LAYER, "out_features"), r"layers\['q'\]\.out_features is missing"),
    "gate mode unknown": (_set(LAYER, "gate", "banana"), r"layers\['q'\]\.gate must be one of"),
    "dropout 1.5": (_set(LAYER, "dropout", 1.5), r"layers\['q'\]\.dropout is refused"),
    "dropout a string": (_set(LAYER, "dropout", "0.1"), r"layers\['q'\]\.dropout is refused"),
    "adapters an object": (_set(LAYER, "adapters", {"a": 1}),
                           r"layers\['q'\]\.adapters must be a list"),
    "an adapter a number": (lambda c: LAYER(c)["adapters"].__setitem__(0, 3),
                            r"adapters\[0\] must be an object"),
    "gate a string": (_set(A0, "gate", "0.5"),
                      r"adapters\[0\]\.gate must be a number for a per_adapter layer, got string"),
    "gate a boolean": (_set(A0, "gate", True), r"adapters\[0\]\.gate must be a number"),
    "gate missing": (_drop(A0, "gate"), r"adapters\[0\]\.gate must be a number"),
    # json writes and reads these as NaN / Infinity: the model's output would be NaN
    "gate NaN": (_set(A0, "gate", float("nan")), r"adapters\[0\]\.gate must be a finite number"),
    "gate Infinity": (_set(_adapter(1), "gate", float("inf")),
                      r"adapters\[1\]\.gate must be a finite number, got inf"),
    "gate -Infinity": (_set(A0, "gate", -float("inf")), r"adapters\[0\]\.gate must be a finite"),
    "alpha 0": (_set(A0, "alpha", 0), r"adapters\[0\]\.alpha is refused .*non-zero"),
    "alpha a string": (_set(A0, "alpha", "16"), r"adapters\[0\]\.alpha is refused"),
    "alpha NaN": (_set(A0, "alpha", float("nan")), r"adapters\[0\]\.alpha is refused"),
    "rank 0": (_set(A0, "rank", 0), r"adapters\[0\]\.rank is refused .*int >= 1"),
    "rank a float": (_set(A0, "rank", 2.0), r"adapters\[0\]\.rank is refused"),
    "rank missing": (_drop(A0, "rank"), r"adapters\[0\]\.rank is missing"),
    "name empty": (_set(A0, "name", ""), r"adapters\[0\]\.name must be a non-empty string"),
    "name a number": (_set(A0, "name", 7), r"adapters\[0\]\.name must be a non-empty string"),
    "name taken": (_set(_adapter(1), "name", "adapter_0"),
                   r"adapters\[1\]\.name 'adapter_0' is used by an earlier adapter"),
    "frozen a string": (_set(A0, "frozen", "yes"), r"adapters\[0\]\.frozen must be"),
    "frozen one flag": (_set(A0, "frozen", [True]), r"adapters\[0\]\.frozen must be"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_malformed_field_is_named_with_the_file(case, tmp_path):
    change, message = CASES[case]
    path = _saved(tmp_path)
    _edit(path, change)
    for model in (Net(), llf.inject(Net(), ["q"], num_adapters=1)):   # fresh, and injected
        with pytest.raises(AdapterFileError, match=message) as err:
            llf.load_adapters(model, path)
        assert str(path / "adapters.json") in str(err.value)


def test_per_row_gate_must_be_null_and_router_tensors_present(tmp_path):
    path = _saved(tmp_path, gate="per_row")
    _edit(path, _set(A0, "gate", 1.0))
    with pytest.raises(AdapterFileError, match=r"adapters\[0\]\.gate must be null"):
        llf.load_adapters(Net(), path)
    path = _saved(tmp_path / "b", gate="per_row")
    from safetensors.torch import load_file, save_file
    tensors = load_file(path / "adapters.safetensors")
    del tensors["q.router_bias"]
    save_file(tensors, path / "adapters.safetensors")
    with pytest.raises(ValueError, match=r"q\.router_bias should have shape \(2,\).*missing"):
        llf.load_adapters(Net(), path)


@pytest.mark.parametrize("gate", ["per_adapter", "per_row"])
def test_an_adapter_entry_dropped_from_the_json_is_named(gate, tmp_path):
    # The safetensors holds two adapters, the JSON lists one: loading one would drop the other.
    path = _saved(tmp_path, gate=gate)
    _edit(path, lambda c: LAYER(c)["adapters"].pop() and None)
    for model in (Net(), llf.inject(Net(), ["q"], num_adapters=2)):
        with pytest.raises(AdapterFileError, match=r"holds 'q\.lora_A\.1', which no entry of "
                           rf"adapters.json accounts for: layers\['q'\] .* is a {gate} layer "
                           r"with 1 adapter\(s\)") as err:
            llf.load_adapters(model, path)
        assert str(path / "adapters.safetensors") in str(err.value)
        assert str(path / "adapters.json") in str(err.value)


def test_a_tensor_of_an_unlisted_layer_or_module_is_named(tmp_path):
    from safetensors.torch import load_file, save_file
    path = _saved(tmp_path)
    tensors = load_file(path / "adapters.safetensors")
    save_file({**tensors, "k.lora_A.0": torch.zeros(2, 6)}, path / "adapters.safetensors")
    with pytest.raises(AdapterFileError, match=r"holds 'k\.lora_A\.0'.*no layer or "
                       r"modules_to_save of that name \(layers \['q'\], modules_to_save "
                       r"\['head'\]\)"):
        llf.load_adapters(Net(), path)
    _edit(path, _set(lambda c: c, "modules_to_save", []))
    save_file(tensors, path / "adapters.safetensors")
    with pytest.raises(AdapterFileError, match=r"holds 'modules_to_save\.head\.bias'"):
        llf.load_adapters(Net(), path)


@pytest.mark.parametrize("name", ["adapters.json", "adapters.safetensors"])
def test_a_truncated_file_is_named(name, tmp_path):
    path = _saved(tmp_path)
    data = (path / name).read_bytes()
    (path / name).write_bytes(data[:len(data) // 2])
    with pytest.raises(AdapterFileError, match="truncated") as err:
        llf.load_adapters(Net(), path)
    assert str(path / name) in str(err.value)


def test_a_well_formed_file_still_loads(tmp_path):
    path = _saved(tmp_path)
    net = llf.load_adapters(Net(), path)
    layer = llf.injected_layers(net)["q"]
    assert layer.ranks == [2, 2] and layer.alphas == [4.0, 4.0]
    assert torch.equal(layer.gates, torch.ones(2))
