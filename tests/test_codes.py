"""kernels/codes.py: the codes every compiled kernel shares, and the per-unit activation codes of a layer."""

import numpy as np
import pytest

from fastmnist.kernels import codes
from fastmnist.kernels.cpu.activation import layer_codes
from fastmnist.recipes import ACTIVATIONS, LOSSES, OPTIMIZERS


def test_every_name_a_recipe_accepts_has_one_distinct_code():
    for names, table in ((ACTIVATIONS, codes.ACTIVATION_CODES), (LOSSES, codes.LOSS_CODES),
                         (OPTIMIZERS, codes.OPTIMIZER_CODES)):
        assert set(table) == set(names)
        assert len(set(table.values())) == len(table) and all(type(v) is int for v in table.values())


@pytest.mark.parametrize("dtype", [np.int8, np.int32])
def test_activation_codes_give_each_unit_its_segments_code_and_identity_elsewhere(dtype):
    segments = ((2, 5, "relu"), (5, 6, "tanh"), (8, 9, "identity"))
    out = codes.activation_codes(segments, 11, dtype)
    assert out.dtype == dtype and out.flags.writeable
    relu, tanh, identity = codes.RELU, codes.TANH, codes.IDENTITY
    assert out.tolist() == [identity] * 2 + [relu] * 3 + [tanh] + [identity] * 5
    assert codes.activation_codes([[0, 3, "tanh"]], 3).tolist() == [tanh] * 3      # lists too, int32 by default


def test_activation_codes_refuse_unknown_activations_and_segments_beyond_the_layer():
    with pytest.raises(ValueError, match="unknown activation 'gelu'"):
        codes.activation_codes(((0, 2, "gelu"),), 4)
    with pytest.raises(ValueError, match="segments cover 5 units, the layer has 4"):
        codes.activation_codes(((0, 5, "relu"),), 4)


def test_numba_cpu_reads_int8_codes_and_may_write_them():
    a = layer_codes(((0, 3, "relu"),), 4)
    assert a.dtype == np.int8 and a.tolist() == [codes.RELU] * 3 + [codes.IDENTITY]
    a[0] = codes.TANH
    assert layer_codes(((0, 3, "relu"),), 4)[0] == codes.RELU
