"""A fuzzing pass over ia-train's settings (Hypothesis): any mixture of values of any type, given as a
YAML file or as flags, either passes every check or is refused with one ConfigError line that names
a setting; never another exception, never a multi-line or unbounded message. A setting that passes
the checks must be one the run can take (the same values again give the same Config)."""

import math

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ia_train.config import FIELDS, ConfigError, load_config
from ia_train.loop import validate

ANY_VALUE = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30),
    st.sampled_from(["passk", "rloo", "majority", "grpo", "hf", "builtin", "tiny", "chain_sum", "zero", "score",
                     "cpu", "sdpa", "token-mean", "1e9", "-1", "nan", "", "true"]),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)
SETTINGS = st.dictionaries(st.sampled_from(sorted(set(FIELDS) - {"out", "resume", "overwrite", "device"})),
                           ANY_VALUE, max_size=6)


def _check_message(e: ConfigError) -> None:
    text = str(e)
    assert "\n" not in text and 0 < len(text) < 600, text
    assert "--" in text or "setting" in text or "prompts_per_step" in text, text  # it names what to change


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=SETTINGS)
def test_any_settings_file_is_taken_or_refused_in_one_line(values, tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text(yaml.safe_dump(values))
    argv = ["--config", str(y), "--out", str(tmp_path / "run")]
    try:
        cfg = load_config(argv)
        validate(cfg)
    except ConfigError as e:
        _check_message(e)
        return
    # it passed: the values are the run's, checked, finite where they are numbers
    for name, f in FIELDS.items():
        value = getattr(cfg, name)
        if isinstance(value, float):
            assert math.isfinite(value), name
    assert load_config(argv) == cfg


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flags=st.lists(st.tuples(st.sampled_from(sorted(set(FIELDS) - {"out", "resume", "overwrite"})),
                                st.one_of(st.text(max_size=12), st.sampled_from(["1e9", "-0", "nan", "inf", "1" * 40,
                                                                               "{a: 1}", "[1]", "none"]))),
                      max_size=4))
def test_any_flags_are_taken_or_refused_in_one_line(flags, tmp_path):
    argv = [part for name, value in flags for part in ("--" + name.replace("_", "-"), value)]
    argv += ["--out", str(tmp_path / "run")]
    try:
        validate(load_config(argv))
    except ConfigError as e:
        _check_message(e)
