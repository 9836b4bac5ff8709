"""Published architectures outside the zoo (tests/compiler/published_models.py; all of them in
`nox -s published_models`): MobileNetV2 at 32x32 bit-exact on `tiny`, and EfficientNet-B0's sigmoid
named as the op the NPU cannot run."""

from __future__ import annotations

import pytest

from tests.compiler.published_models import check


@pytest.mark.parametrize("name, outcome", [("MobileNetV2", "bit-exact"),
                                           ("EfficientNetB0", "unsupported: LOGISTIC")])
def test_published_architecture(name, outcome):
    assert check(name, 32, "tiny")[1] == outcome
