"""The constants and enum codes that Python and C++ both hold agree (ia_kernels/core/numerics.py
against csrc/include/ia/*.h, read through the compiled module's exports)."""

import pytest

from ia_kernels import _native
from ia_kernels.core import numerics

pytestmark = pytest.mark.skipif(not _native.has_cpu_module(), reason="ia_kernels._C is not built")


def test_enum_codes_match_the_headers():
    C = _native.cpu_module()
    assert numerics.ESTIMATOR_CODES == dict(C.ESTIMATOR_CODES)
    assert numerics.PASSK_VARIANT_CODES == dict(C.PASSK_VARIANT_CODES)
    assert numerics.KL_ESTIMATOR_CODES == dict(C.KL_ESTIMATOR_CODES)
    assert (numerics.REWARD_NON_FINITE, numerics.REWARD_OUTSIDE_UNIT, numerics.REWARD_NOT_BINARY) == \
        tuple(C.REWARD_ERROR_CODES)


def test_numeric_constants_match_the_headers():
    C = _native.cpu_module()
    assert numerics.MAX_LOG_RATIO == C.MAX_LOG_RATIO
    assert numerics.SHIFTED_LOGIT_FLOOR == C.SHIFTED_LOGIT_FLOOR
