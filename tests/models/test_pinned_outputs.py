"""MoBaNet and KTB give the outputs they gave before "Engine v2" (reference from main 3985ff5).

The reference holds, per case and output, float64 sums and every k-th value of the logits
(``tests/models/pinned_cases.py``): eval logits, training outputs with seeded dropout (main and
aux heads), and training with KTB's MMST token drops.
"""

import pytest
import torch

from tests.models.pinned_cases import CASES, REFERENCE, build, outputs


@pytest.fixture(scope="module")
def reference() -> dict:
    return torch.load(REFERENCE, weights_only=True)


@pytest.mark.parametrize("case", sorted(CASES))
def test_outputs_equal_the_reference_from_before_engine_v2(case, reference):
    got = outputs(build(case))
    want = reference[case]
    assert sorted(got) == sorted(want)
    for name, summary in want.items():
        have = got[name]
        assert torch.equal(have["shape"], summary["shape"]), (case, name)
        torch.testing.assert_close(have["values"], summary["values"], rtol=1e-4, atol=1e-5)
        for key in ("sum", "abs", "sq"):
            scale = float(summary["abs"]) / summary["values"].numel() + 1.0
            assert abs(float(have[key] - summary[key])) <= 1e-5 * scale * have["values"].numel(), (
                case, name, key, float(have[key]), float(summary[key]),
            )  # fmt: skip
