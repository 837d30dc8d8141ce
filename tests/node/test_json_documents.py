"""A JSON configuration is read element by element (so a large one does not hold the
GIL in one call): the same objects as json.loads, and refused where json.loads refuses."""
import json

import pytest
from hypothesis import given, settings, strategies as st

from meshcore.config.yamlfile import _json_document

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=8))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                        st.dictionaries(st.text(max_size=6), inner, max_size=4)),
                      max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=10), values, max_size=5), st.sampled_from([None, 0, 2]))
def test_the_same_objects_as_json_loads(document, indent):
    text = json.dumps(document, indent=indent)
    assert _json_document(text) == json.loads(text)


@pytest.mark.parametrize("text", ['{"a": [1,]}', '{"a": 1,}', '{"a" 1}', '{"a": [1 2]}', '{"a": 1} x', '{1: 2}',
                                  '{"a": [1}', '{"a": 1', '{"a": [1], }', '{,}', '{"a": [,1]}'])
def test_refused_where_json_loads_refuses(text):
    with pytest.raises(ValueError):
        json.loads(text)
    with pytest.raises(ValueError):
        _json_document(text)
