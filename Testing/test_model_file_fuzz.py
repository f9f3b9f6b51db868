"""Byte flips in a model file's header (hypothesis, derandomised): whatever a damaged
download or a tamperer does to the safetensors header, opening the file either refuses it
with a ModelFileError that says what to do, or gives the very same tensors (a flip in the
card's text that still makes a valid, matching card). It never crashes with another error."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from GraTaSegmenterLib.errors import GraTaError
from GraTaSegmenterLib.models import load_model, save_model
from conftest import build, fundus_card


@pytest.fixture(scope="module")
def valid_file(tmp_path_factory):
    torch.manual_seed(0)
    card = fundus_card()
    path = save_model(build(card), card, tmp_path_factory.mktemp("fuzz") / "valid.safetensors")
    data = path.read_bytes()
    header_end = 8 + int.from_bytes(data[:8], "little")
    return data, header_end, load_model(path).state_dict()


flips = st.lists(st.tuples(st.integers(min_value=0), st.integers(min_value=1, max_value=255)), min_size=1, max_size=3)


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flips=flips)
def test_any_flip_of_header_bytes_is_refused_or_loads_the_same_tensors(valid_file, tmp_path, flips):
    data, header_end, tensors = valid_file
    damaged = bytearray(data)
    for position, mask in flips:
        damaged[position % header_end] ^= mask
    path = tmp_path / "damaged.safetensors"
    path.write_bytes(bytes(damaged))
    try:
        net = load_model(path)
    except GraTaError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    loaded = net.state_dict()
    assert loaded.keys() == tensors.keys()
    for name, value in tensors.items():
        assert torch.equal(loaded[name], value), name


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(min_value=0))
def test_any_truncation_is_refused(valid_file, tmp_path, cut):
    data, _header_end, _tensors = valid_file
    path = tmp_path / "cut.safetensors"
    path.write_bytes(data[:cut % len(data)])
    with pytest.raises(GraTaError):
        load_model(path)
