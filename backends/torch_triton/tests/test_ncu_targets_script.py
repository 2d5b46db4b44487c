"""benchmarks/gpu/ncu_targets.py on the CPU: its argument handling and the arithmetic of its
``--kernels`` table (the GPU runs are recorded in benchmarks/results/)."""

import pytest
import torch

from conftest import load_benchmark_script


@pytest.fixture(scope="module")
def nt():
    return load_benchmark_script("gpu/ncu_targets.py")


@pytest.mark.parametrize("argv", [[], ["nope"], ["m1_ours", "m3_ours"], ["nope", "--kernels", "5"]])
def test_usage_errors_name_the_targets(nt, argv, capsys):
    assert nt.main(argv) == 2
    err = capsys.readouterr().err
    assert "usage: ncu_targets.py TARGET [--kernels [REPS]]" in err and "m1_official" in err


def test_kernel_table_averages_over_calls(nt):
    x = torch.ones(256)

    def call():  # two sums and one mul a call
        return (x.sum(), x.sum(), x.mul(2.0))

    rows = {name: (us, n) for name, us, n in nt.kernel_table(call, reps=4, device="CPU")}
    assert rows["aten::sum"][1] == 2 and rows["aten::mul"][1] == 1
    assert all(us >= 0 for us, _ in rows.values())
    ordered = [us for _, us, _ in nt.kernel_table(call, reps=2, device="CPU")]
    assert ordered == sorted(ordered, reverse=True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message printed without a GPU")
def test_without_a_gpu_it_says_so(nt, capsys):
    assert nt.main(["m1_ours", "--kernels"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
