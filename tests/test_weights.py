"""sana_wm.weights: reading every supported format, strict loading, clear errors naming the file."""

import json

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from sana_wm.weights import load_into, read_state_dict


class Net(nn.Module):
    def __init__(self, width: int = 4):
        super().__init__()
        self.lin = nn.Linear(3, width)
        self.norm = nn.LayerNorm(width)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))


def _state(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    net = Net()
    for p in net.parameters():
        nn.init.normal_(p)
    net.steps.fill_(7)
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def _assert_same(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def test_safetensors_roundtrip_is_memory_mapped(tmp_path):
    state = _state()
    save_file(state, tmp_path / "w.safetensors")
    read = read_state_dict(tmp_path / "w.safetensors")
    _assert_same(read, state)
    with torch.device("meta"):
        net = Net()
    load_into(net, read, source="w.safetensors")
    # assigned, not copied: the parameter is the file-backed tensor itself
    assert net.lin.weight.data_ptr() == read["lin.weight"].data_ptr()
    _assert_same(net.state_dict(), state)


def test_load_into_casts_per_tensor_and_copies_in_place(tmp_path):
    state = _state()
    with torch.device("meta"):
        net = Net()
    load_into(net, state, source="mem", dtype=torch.bfloat16)
    assert net.lin.weight.dtype == torch.bfloat16 and net.steps.dtype == torch.long
    assert torch.equal(net.lin.weight, state["lin.weight"].bfloat16())
    assert isinstance(net.lin.weight, nn.Parameter) and net.lin.weight.requires_grad

    real = Net()
    ptr = real.lin.weight.data_ptr()
    load_into(real, state, source="mem")
    assert real.lin.weight.data_ptr() == ptr  # copied into the preallocated parameter
    _assert_same(real.state_dict(), state)


def test_sharded_folder_and_index(tmp_path):
    state = _state()
    names = sorted(state)
    shards = {"m-00001-of-00002.safetensors": names[:2], "m-00002-of-00002.safetensors": names[2:]}
    for shard, keys in shards.items():
        save_file({k: state[k] for k in keys}, tmp_path / shard)
    index = tmp_path / "m.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": {k: s for s, ks in shards.items() for k in ks}}))
    _assert_same(read_state_dict(tmp_path), state)
    _assert_same(read_state_dict(index), state)

    (tmp_path / "m-00002-of-00002.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="m-00002-of-00002.safetensors"):
        read_state_dict(index)
    save_file({k: state[k] for k in names[2:-1]}, tmp_path / "m-00002-of-00002.safetensors")
    with pytest.raises(ValueError, match=f"(?s)m-00002-of-00002.safetensors.*1 missing key.*{names[-1]}"):
        read_state_dict(tmp_path)


def test_folder_with_one_safetensors_file(tmp_path):
    save_file(_state(), tmp_path / "diffusion_pytorch_model.safetensors")
    _assert_same(read_state_dict(tmp_path), _state())
    save_file(_state(), tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="several .safetensors"):
        read_state_dict(tmp_path)


def test_torch_pickles(tmp_path):
    state = _state()
    torch.save(state, tmp_path / "plain.pt")
    _assert_same(read_state_dict(tmp_path / "plain.pt"), state)
    _assert_same(read_state_dict(tmp_path / "plain.pt", key="generator"), state)
    torch.save(state, tmp_path / "legacy.bin", _use_new_zipfile_serialization=False)
    _assert_same(read_state_dict(tmp_path / "legacy.bin"), state)

    torch.save({"generator": state, "step": 3, "critic": {"x": torch.ones(1)}}, tmp_path / "train.pt")
    _assert_same(read_state_dict(tmp_path / "train.pt", key="generator"), state)
    with pytest.raises(ValueError, match=r"train\.pt.*not a flat dict.*critic.*step.*key="):
        read_state_dict(tmp_path / "train.pt")
    with pytest.raises(ValueError, match=r"train\.pt has no entry 'ema'"):
        read_state_dict(tmp_path / "train.pt", key="ema")


class Custom:
    pass


@pytest.mark.parametrize("payload", [Custom(), print], ids=["class-instance", "function"])
def test_pickle_with_objects_is_refused(tmp_path, payload):
    torch.save({"w": torch.ones(2), "obj": payload}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match=r"evil\.pt holds objects other than tensors.*Unsupported global"):
        read_state_dict(tmp_path / "evil.pt")


def test_corrupt_and_truncated_files(tmp_path):
    save_file(_state(), tmp_path / "w.safetensors")
    data = (tmp_path / "w.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-5])
    with pytest.raises(ValueError, match=r"cut\.safetensors.*truncated"):
        read_state_dict(tmp_path / "cut.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"junk\.safetensors"):
        read_state_dict(tmp_path / "junk.safetensors")

    torch.save(_state(), tmp_path / "w.pt")
    data = (tmp_path / "w.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut\.pt.*truncated"):
        read_state_dict(tmp_path / "cut.pt")

    with pytest.raises(FileNotFoundError, match="nothing_here"):
        read_state_dict(tmp_path / "nothing_here.safetensors")
    (tmp_path / "w.npz").write_bytes(b"")
    with pytest.raises(ValueError, match=r"w\.npz: unknown weight file type"):
        read_state_dict(tmp_path / "w.npz")


def test_strict_key_report_names_every_problem():
    state = _state()
    state["extra.weight"] = torch.ones(1)
    del state["norm.bias"]
    state["lin.weight"] = torch.ones(5, 3)
    with torch.device("meta"):
        net = Net()
    with pytest.raises(ValueError) as info:
        load_into(net, state, source="ckpt.safetensors")
    msg = str(info.value)
    assert "ckpt.safetensors" in msg
    assert "1 missing key(s): norm.bias" in msg
    assert "1 unexpected key(s): extra.weight" in msg
    assert "lin.weight: file (5, 3) vs model (4, 3)" in msg


def test_long_key_lists_are_truncated():
    many = nn.ModuleList(nn.Linear(1, 1) for _ in range(30))
    with pytest.raises(ValueError, match=r"60 missing key\(s\): .*\.\.\. and 40 more"):
        load_into(many, {}, source="empty")


def test_meta_tensors_left_after_loading_are_an_error():
    class WithTable(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 2)
            self.register_buffer("table", torch.ones(3), persistent=False)

    with torch.device("meta"):
        net = WithTable()
    state = {k: torch.zeros(v.shape) for k, v in net.state_dict().items()}
    with pytest.raises(ValueError, match="still on the meta device.*table"):
        load_into(net, state, source="x.safetensors")
