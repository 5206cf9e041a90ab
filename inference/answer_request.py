"""What the model service accepts: the body of `POST /v1/answer` turned into questions, or of
`POST /v1/classify` into texts, or a `RequestError` that says what is wrong, the HTTP status for it and the
limit that was passed.

Owns: the request schemas (`/v1/answer`: one object `{"question", "context"[, "n_best",
"max_answer_length"]}` or a JSON array of them; `/v1/classify`: `{"text"}` for single-sentence tasks,
`{"text_a", "text_b"}` for pair tasks, or an array of them), the limits checked per request (body bytes,
items per request, context / text characters) and the wording of every refusal. Does not own HTTP
plumbing, batching or the model (`inference.server`, `inference.batching`, `inference.predictor`).

Status codes, so that a client can tell its own mistake from the server's state:
  400  the body is not UTF-8 or not JSON (with the offset / line and column);
  413  the body, or the number of questions in it, exceeds a limit (the limit is in the answer);
  422  JSON of the wrong shape: a missing or unknown field, a wrong type, an empty question, context or
       text (also one of only control or format characters, which the tokenizer drops), an integer
       literal of more than 4300 digits, an option out of range, a context or text over the character
       limit, a pair task's item without `text_b` (or a single-sentence task's with one);
(503, queue full or model not ready, is the server's and lives in `inference.server`.)
"""
import dataclasses
import json
import sys
from typing import Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tokenizer import has_words

MAX_N_BEST = 20          # the n-best list SQuAD post-processing keeps (run_squad's --n-best-size default)
MAX_ANSWER_TOKENS = 512  # no window is longer than BERT's 512 positions, so no answer span can be either


@dataclasses.dataclass(frozen=True)
class Limits:
    """Per-request bounds, from the server's flags.

    Attributes:
      max_body_bytes: int, largest accepted body (413 above).
      max_questions: int, most questions in one batch request (413 above); the queue bound, since a
        request with more could never be admitted.
      max_context_chars: int, longest context (or classified text) in characters (422 above): each
        384-token window of a long context is a model run, so this bounds the work one question can ask
        for (a classified text is truncated to max_seq_length, so this bounds its tokenising).
    """
    max_body_bytes: int
    max_questions: int
    max_context_chars: int

    def as_dict(self):
        return dataclasses.asdict(self)


class RequestError(Exception):
    """A request the service refuses.

    Attributes:
      status: int HTTP status (400, 413, 422).
      body: dict for the JSON answer: {"error": one sentence, and e.g. "limit", "detail"}.
    """

    def __init__(self, status, message, **extra):
        super().__init__(message)
        self.status = status
        self.body = {"error": message, **extra}


class Question(BaseModel):
    """One question. Strict types: `"n_best": "3"` or `true` is an error, not a silent conversion."""
    model_config = ConfigDict(extra="forbid", strict=True)

    question: str = Field(description="the question, non-empty")
    context: str = Field(description="the passage the answer is taken from, non-empty")
    n_best: int = Field(1, ge=1, le=MAX_N_BEST, description="answers to return, best first")
    max_answer_length: int = Field(30, ge=1, le=MAX_ANSWER_TOKENS, description="longest answer in tokens")

    @property
    def options(self):
        """The options the model takes once per batch: only questions with equal options share one."""
        return self.n_best, self.max_answer_length


class TextItem(BaseModel):
    """One text (or text pair) to classify. Which fields a task needs is checked in `_validate_text`."""
    model_config = ConfigDict(extra="forbid", strict=True)

    text: Optional[str] = Field(None, description="the sentence (single-sentence tasks); text_a's other name")
    text_a: Optional[str] = Field(None, description="a pair's first sentence")
    text_b: Optional[str] = Field(None, description="a pair's second sentence (pair tasks only)")


@dataclasses.dataclass(frozen=True)
class TextRequest:
    """A validated text to classify: text_a, and text_b for pair tasks (None otherwise)."""
    text_a: str
    text_b: Optional[str] = None

    @property
    def payload(self):
        """What ClassifierPredictor.classify takes: the string, or the (text_a, text_b) pair."""
        return self.text_a if self.text_b is None else (self.text_a, self.text_b)


def read_json(body, limits, example='{"question": "...", "context": "..."}'):
    """Decode the raw body: UTF-8, then JSON.

    Args:
      body: bytes, the whole request body.
      limits: Limits.
      example: the body a client should send, named in the message for an empty body.

    Returns:
      The decoded JSON value.

    Raises:
      RequestError: 413 for a body over the limit; 400 for an empty body, bytes that are not UTF-8, text
        that is not JSON, or JSON nested too deeply for the parser; 422 for an integer literal longer than
        Python converts (`sys.get_int_max_str_digits()`, 4300 by default): valid JSON, but no field's value.
    """
    if len(body) > limits.max_body_bytes:
        raise body_too_large(len(body), limits)
    if not body.strip():
        raise RequestError(400, f"the body is empty; send JSON like {example}")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise RequestError(400, f"the body is not UTF-8: byte {err.start} ({body[err.start:err.start + 1]!r}) "
                                "cannot be decoded; send JSON encoded as UTF-8") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise RequestError(400, f"the body is not valid JSON: {err.msg} at line {err.lineno} column {err.colno}"
                           ) from None
    except RecursionError:
        raise RequestError(400, "the body is JSON nested too deeply to read") from None
    except ValueError:  # not a syntax error: CPython refuses to convert an integer literal this long
        raise RequestError(422, f"the body has an integer of more than {sys.get_int_max_str_digits()} digits; "
                                "no field takes one") from None


def body_too_large(size, limits):
    """The 413 for a body of `size` bytes (also used before reading, from Content-Length)."""
    return RequestError(413, f"the body has {size} bytes, more than the limit of {limits.max_body_bytes}",
                        limit=limits.max_body_bytes)


def parse_questions(value, limits):
    """Validate a decoded `/v1/answer` body into questions.

    Args:
      value: the JSON value: an object (one question) or a non-empty array of objects (a batch).
      limits: Limits.

    Returns:
      (list[Question], is_batch: bool). A single object gives one question and is_batch False.

    Raises:
      RequestError: 413 for more questions than `limits.max_questions`; 422 for anything else wrong, with
        "detail": [{"field", "message"}] listing every problem (fields of batch items as "[i].field").
    """
    return _parse_items(value, limits, _validate, "questions")


def parse_texts(value, limits, *, pair, task):
    """Validate a decoded `/v1/classify` body into texts.

    Args:
      value: an object `{"text"}` (single-sentence task) or `{"text_a", "text_b"}` (pair task; `text` is
        accepted for text_a), or a non-empty array of them.
      limits: Limits (max_questions bounds the texts per request, max_context_chars each text).
      pair: True when the model's task classifies sentence pairs.
      task: the task's name, for the messages.

    Returns:
      (list[TextRequest], is_batch: bool).

    Raises:
      RequestError: 413 for more texts than `limits.max_questions`; 422 for anything else wrong (as
        `parse_questions`), e.g. a pair task's item without text_b names the field "text_b".
    """
    return _parse_items(value, limits, lambda item, lim: _validate_text(item, lim, pair, task), "texts")


def _parse_items(value, limits, validate, noun):
    """The shared shape of both routes' bodies: one object or a non-empty, bounded array of them, each
    checked by `validate(item, limits)` -> the validated item or a list of problems."""
    is_batch = isinstance(value, list)
    if not is_batch and not isinstance(value, dict):
        raise RequestError(422, f"the body must be a JSON object or an array of objects, got {_json_type(value)}")
    items = value if is_batch else [value]
    if not items:
        raise RequestError(422, f"the array of {noun} is empty")
    if len(items) > limits.max_questions:
        raise RequestError(413, f"the request has {len(items)} {noun}, more than the limit of "
                                f"{limits.max_questions}; split it", limit=limits.max_questions)
    valid, problems = [], []
    for index, item in enumerate(items):
        found = validate(item, limits)
        if isinstance(found, list):
            problems += [dict(problem, field=_field_name(index if is_batch else None, problem["field"]))
                         for problem in found]
        else:
            valid.append(found)
    if problems:
        summary = "; ".join(f"{p['field'] or 'item'}: {p['message']}" for p in problems[:3])
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise RequestError(422, f"invalid request: {summary}{more}", detail=problems)
    return valid, is_batch


def _check_text(field, text, limits):
    """Problems of one text field: empty (nothing the tokenizer keeps), an unpaired surrogate, over the
    character limit."""
    problems = []
    if not has_words(text):  # "\x00\x01" or "\u200b" is as empty to the model as ""
        problems.append({"field": field, "message": "must not be empty or only whitespace, control or format "
                                                    "characters (the tokenizer drops them)"})
    surrogate = _unpaired_surrogate(text)
    if surrogate is not None:  # JSON's "\ud800" escapes decode to text no tokenizer or encoder takes
        problems.append({"field": field, "message": f"has an unpaired surrogate (U+{ord(text[surrogate]):04X}) "
                                                    f"at character {surrogate}; send valid Unicode"})
    if len(text) > limits.max_context_chars:
        problems.append({"field": field, "limit": limits.max_context_chars,
                         "message": f"has {len(text)} characters, more than the limit of "
                                    f"{limits.max_context_chars}"})
    return problems


def _parse(item, schema, what):
    """`schema.model_validate(item)`, or the list of problems {"field", "message"} naming each bad field."""
    if not isinstance(item, dict):
        return [{"field": "", "message": f"each {what} must be a JSON object, got {_json_type(item)}"}]
    try:
        return schema.model_validate(item)
    except ValidationError as err:
        return [{"field": ".".join(str(part) for part in e["loc"]), "message": e["msg"]} for e in err.errors()]


def _validate_text(item, limits, pair, task):
    """A TextRequest, or a list of problems {"field", "message"[, "limit"]}."""
    fields = _parse(item, TextItem, "text")
    if isinstance(fields, list):
        return fields
    if fields.text is not None and fields.text_a is not None:
        return [{"field": "text_a", "message": "give text or text_a, not both (they are the same sentence)"}]
    first_name = "text" if fields.text is not None else "text_a"
    first = fields.text if fields.text is not None else fields.text_a
    problems = []
    if first is None:
        problems.append({"field": "text_a" if pair else "text", "message": "Field required"})
    if pair and fields.text_b is None:
        problems.append({"field": "text_b", "message": f"Field required: {task} classifies sentence pairs; "
                                                       "send text_a and text_b"})
    if not pair and fields.text_b is not None:
        problems.append({"field": "text_b", "message": f"{task} classifies single sentences; send only text"})
    if problems:
        return problems
    problems = _check_text(first_name, first, limits)
    if pair:
        problems += _check_text("text_b", fields.text_b, limits)
    return problems or TextRequest(first, fields.text_b if pair else None)


def _validate(item, limits):
    """A Question, or a list of problems {"field", "message"[, "limit"]}."""
    question = _parse(item, Question, "question")
    if isinstance(question, list):
        return question
    # The question's length is bounded by the body only (max_query_length truncates it), so the character
    # limit is the context's.
    problems = [p for p in _check_text("question", question.question, limits) if "limit" not in p]
    problems += _check_text("context", question.context, limits)
    return problems or question


def _unpaired_surrogate(text):
    """Index of the first lone UTF-16 surrogate in `text`, or None (the common case costs one encode)."""
    try:
        text.encode("utf-8")
        return None
    except UnicodeEncodeError as err:
        return err.start


def _field_name(index, field):
    """"context" for a single question; "[2].context" (or "[2]" for the item itself) in a batch."""
    if index is None:
        return field
    return f"[{index}].{field}" if field else f"[{index}]"


def _json_type(value):
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
             float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)
