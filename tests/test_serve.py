import pytest

from tasks.serve import RequestError, parse_texts


@pytest.mark.parametrize(
    "payload",
    [
        {"inputs": ["a", "b"]},
        {"instances": ["a", "b"]},
        {"inputs": {"text": ["a", "b"]}},
        {"instances": [{"text": "a"}, {"text": "b"}]},
        {"dataframe_records": [{"text": "a"}, {"text": "b"}]},
        {"dataframe_split": {"columns": ["text"], "data": [["a"], ["b"]]}},
    ],
)
def test_every_mlflow_layout_of_a_list_of_strings_is_accepted(payload):
    assert parse_texts(payload) == ["a", "b"]


@pytest.mark.parametrize(
    "payload,says",
    [
        ({"dataframe_records": [{"txt": "a"}]}, "only input column is 'text'"),
        ({"dataframe_split": {"columns": ["body"], "data": [["a"]]}}, "only input column is 'text'"),
        ({"inputs": ["a", None]}, "item 1 is null"),
        ({"inputs": ["a", 3]}, "item 1 is int"),
        ({"inputs": [["a", "b"]]}, "item 0 is list"),
        ({"inputs": []}, "no texts"),
        ({"inputs": "a"}, "must be a list"),
        ({"data": ["a"]}, "exactly one of"),
        ({"inputs": ["a"], "instances": ["b"]}, "exactly one of"),
        (["a"], "JSON object"),
    ],
)
def test_malformed_requests_say_what_is_wrong(payload, says):
    with pytest.raises(RequestError, match=says) as err:
        parse_texts(payload)
    assert err.value.status == 400
