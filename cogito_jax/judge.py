"""An LLM judge behind any OpenAI-compatible chat-completions endpoint, built so nothing is lost.

Each HTTP attempt runs under one overall deadline (``timeout_s`` for the whole exchange, however slowly the
server sends its bytes). A timeout, a connection or protocol error, HTTP 408/429/5xx, or a reply that is not
JSON with a non-empty text in ``choices[0].message.content`` is a failed attempt, retried with exponential
backoff (or after the server's ``Retry-After``, at most ``max_backoff_s``). Redirects are not followed (the
API key goes to the configured URL only) and other 4xx replies are not retried: both fail at once. Calls are
rate-limited; each good reply is cached on disk (JSONL keyed by a hash of URL, model and request), so a re-run
never pays twice and a crashed run resumes where it stopped; a cached row that is not a usable entry is
skipped and asked again, a torn last line is dropped, and any other line that is not JSON stops the client with
a :class:`~cogito_jax.jsonl.JsonlError` naming ``file:line``. A call that fails raises :class:`JudgeError`:
callers record it as a failure, never as a verdict.

The rubric both the audit (``data_prep/stages/audit.py``) and the RL judge reward use: :func:`rubric_messages`
(hallucination, logic error, shortcut), :func:`parse_verdict` (a strict reading of the reply) and
:func:`verdict` (accepted, rejected, or judge_failed after retries / unreadable replies).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import email.utils
import hashlib
import json
import os
import pathlib
import re
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import httpx
import tenacity

from cogito_jax import jsonl
from cogito_jax.data import chat
from cogito_jax.errors import ConfigError
from cogito_jax.log import logger
from cogito_jax.sampling import continuous
from cogito_jax.sampling.driver import LENGTH_BUCKETS

Messages = Sequence[Mapping[str, str]]
RETRY_STATUSES = frozenset({408, 429})  # and every 5xx


class JudgeError(RuntimeError):
    """A judge call that failed (after its retries, or at once when retrying cannot help); says why."""


class _Retryable(JudgeError):
    """One failed attempt worth repeating, with the wait the server asked for (seconds) if it gave one."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


def retry_after_s(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delay in seconds or an HTTP date); None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def check_settings(judge_url: str, *, prefix: str = "", timeout_s: float = 60.0, **counts: float) -> None:
    """Raises ConfigError naming the first bad setting: a URL that is not http(s) with a host, a timeout that is
    not > 0, or a count or rate (``max_retries``, ``backoff_s``, ...) below 0. ``prefix`` is the settings' section."""
    parts = urlsplit(judge_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{prefix}judge_url={judge_url!r} must be an http:// or https:// URL with a host, e.g. "
                          "http://localhost:8000/v1")
    if not timeout_s > 0:
        raise ConfigError(f"{prefix}timeout_s={timeout_s!r} must be > 0 (seconds for one whole HTTP exchange)")
    for name, value in counts.items():
        if not value >= 0:
            raise ConfigError(f"{prefix}{name}={value!r} must be >= 0")


def _one_line(text: str, limit: int = 200) -> str:
    return " ".join(text.split())[:limit]


class HttpJudge:
    """``complete(messages) -> str`` against ``{base_url}/chat/completions``."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str = "OPENAI_API_KEY",
        timeout_s: float = 60.0,
        max_retries: int = 5,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        requests_per_s: float = 0.0,
        cache_path: str | pathlib.Path | None = None,
    ):
        check_settings(base_url, timeout_s=timeout_s, max_retries=max_retries, backoff_s=backoff_s,
                       max_backoff_s=max_backoff_s, requests_per_s=requests_per_s)
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key = os.environ.get(api_key_env, "")
        self.timeout_s, self.max_retries = timeout_s, max_retries
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self.min_interval = 1.0 / requests_per_s if requests_per_s > 0 else 0.0
        self._last_call = 0.0
        self._lock = threading.Lock()
        self._ssl = httpx.create_ssl_context()  # made once: building one per request costs ~50 ms
        self._backoff = tenacity.wait_exponential(multiplier=backoff_s, max=max_backoff_s)
        self.cache_path = pathlib.Path(cache_path) if cache_path else None
        self._cache: dict[str, str] = {}
        self.stats = {"calls": 0, "cache_hits": 0, "retries": 0, "failures": 0}
        if self.cache_path:
            for row in jsonl.read(self.cache_path, errors="replace", objects=False):
                key, reply = _cache_entry(row)
                if key is not None:
                    self._cache[key] = reply

    def _key(self, body: Mapping[str, Any]) -> str:
        return hashlib.sha256(json.dumps({"url": self.url, **body}, sort_keys=True).encode()).hexdigest()

    def complete(self, messages: Messages, *, temperature: float = 0.0, max_tokens: int = 1024,
                 run: int = 0) -> str:
        """The judge's reply text; ``run`` separates repeated judgements of the same request in the cache."""
        body = {"model": self.model, "messages": list(messages), "temperature": temperature,
                "max_tokens": max_tokens}
        key = self._key({**body, "run": run})
        if key in self._cache:
            self._count("cache_hits")
            return self._cache[key]
        reply = self._call_with_retries(body)
        with self._lock:
            self._cache[key] = reply
            if self.cache_path:
                with jsonl.open_append(self.cache_path) as f:  # a torn last line is cut off first
                    jsonl.write_row(f, {"key": key, "reply": reply})
        return reply

    def _count(self, name: str) -> None:
        with self._lock:
            self.stats[name] += 1

    def _throttle(self) -> None:
        if not self.min_interval:
            return
        with self._lock:
            wait = self._last_call + self.min_interval - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            self._last_call = time.monotonic()

    def _wait(self, state: tenacity.RetryCallState) -> float:
        """Seconds before the next attempt: the server's Retry-After if it sent one, else exponential backoff."""
        error = state.outcome.exception() if state.outcome else None
        asked = getattr(error, "retry_after", None)
        return min(asked, self.max_backoff_s) if asked is not None else self._backoff(state)

    def _before_sleep(self, state: tenacity.RetryCallState) -> None:
        self._count("retries")
        logger.debug("judge attempt %d failed: %s", state.attempt_number, state.outcome.exception())

    def _call_with_retries(self, body: Mapping[str, Any]) -> str:
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.max_retries + 1), wait=self._wait,
            retry=tenacity.retry_if_exception_type(_Retryable), before_sleep=self._before_sleep, reraise=True)
        try:
            return retrying(self._attempt, body)
        except _Retryable as e:
            self._count("failures")
            raise JudgeError(f"judge call failed after {self.max_retries + 1} attempts: {e}") from e
        except JudgeError:
            self._count("failures")
            raise

    def _attempt(self, body: Mapping[str, Any]) -> str:
        """One HTTP exchange under the overall deadline; any failure is a JudgeError (retryable or not)."""
        self._throttle()
        self._count("calls")
        try:
            return _run_coroutine(self._post(body))
        except JudgeError:
            raise
        except TimeoutError as e:
            raise _Retryable(f"no complete reply from {self.url} within {self.timeout_s:g} s") from e
        except Exception as e:  # connection, protocol, decoding: this attempt failed, the next may not
            raise _Retryable(f"{type(e).__name__} calling {self.url}: {_one_line(str(e))}") from e

    async def _post(self, body: Mapping[str, Any]) -> str:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        async with asyncio.timeout(self.timeout_s):
            async with httpx.AsyncClient(timeout=self.timeout_s, follow_redirects=False, verify=self._ssl) as client:
                resp = await client.post(self.url, json=body, headers=headers)
        return self._content(resp)

    def _content(self, resp: httpx.Response) -> str:
        """The reply text of a complete response; raises JudgeError (retryable where a retry can help)."""
        code = resp.status_code
        if 300 <= code < 400:
            raise JudgeError(f"HTTP {code} from {self.url} redirects to {resp.headers.get('location')!r}; redirects "
                             "are not followed: set the judge URL to the address that serves the API")
        if code in RETRY_STATUSES or code >= 500:
            raise _Retryable(f"HTTP {code} from {self.url}", retry_after_s(resp.headers.get("retry-after")))
        if code != 200:
            detail = _one_line(resp.content.decode("utf-8", errors="replace"))
            raise JudgeError(f"HTTP {code} from {self.url} (not retried): {detail or 'no body'}")
        try:
            payload = json.loads(resp.content)
            content = payload["choices"][0]["message"]["content"]
        except ValueError as e:
            raise _Retryable(f"reply from {self.url} is not UTF-8 JSON: {_one_line(str(e), 80)}") from e
        except (KeyError, IndexError, TypeError) as e:
            raise _Retryable(f"reply from {self.url} has no choices[0].message.content") from e
        if not isinstance(content, str) or not content.strip():
            raise _Retryable(f"reply from {self.url} has no text in choices[0].message.content "
                             f"(got {_one_line(repr(content), 40)})")
        return content


def _cache_entry(row: Any) -> tuple[str | None, str]:
    """(key, reply) of one cache row, or (None, "") for a row that is not a usable entry."""
    if not isinstance(row, dict):
        return None, ""
    key, reply = row.get("key"), row.get("reply")
    if isinstance(key, str) and isinstance(reply, str) and reply.strip():
        return key, reply
    return None, ""


def _run_coroutine(coro: Any) -> Any:
    """Runs ``coro`` to completion from synchronous code (in a helper thread if this one runs an event loop)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


class EngineJudge:
    """The same ``complete(messages)`` interface backed by a local model through the sampling engine."""

    def __init__(self, model, tokenizer, family: str, max_new_tokens: int = 256):
        self.model, self.tokenizer, self.family, self.max_new_tokens = model, tokenizer, family, max_new_tokens
        self.stats = {"calls": 0, "cache_hits": 0, "retries": 0, "failures": 0}

    def complete(self, messages: Messages, *, temperature: float = 0.0, max_tokens: int | None = None,
                 run: int = 0) -> str:
        system = next((m["content"] for m in messages if m["role"] == "system"), None)
        user = "\n\n".join(m["content"] for m in messages if m["role"] == "user")
        fmt = chat.chat_format(self.family)
        ids = chat.encode_prompt(self.tokenizer, fmt, user, 0, system)
        eos = [self.tokenizer.convert_tokens_to_ids(t) for t in (chat.IM_END, "<|endoftext|>")]
        max_new = max_tokens or self.max_new_tokens
        # One page table width for every prompt up to the largest length bucket (one compiled program); a longer
        # prompt gets an engine of its own.
        cfg = continuous.SlotConfig(slots=1, max_context=max(max(LENGTH_BUCKETS), len(ids)) + max_new)
        self.stats["calls"] += 1
        got: list[continuous.Finished] = []
        key = hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()
        request = continuous.Request(id=key, ids=ids, samples=[0], max_new_tokens=max_new, temperature=temperature,
                                     stop_ids=eos)
        continuous.engine_for(self.model, cfg).run([request], got.append, seed=run)
        toks = [t for t in got[0].tokens if t not in eos]
        return chat.split_thinking(self.tokenizer.decode(toks, skip_special_tokens=True))[1]


# ----------------------------------------------------------------------------- the rubric and its verdicts

JUDGE_SYSTEM = "You are a strict auditor of reasoning about audio. You follow the rubric exactly."
JUDGE_REASONS = ("hallucination", "logic_error", "shortcut")
VERDICT_ATTEMPTS = 3  # judge runs asked for a readable verdict (a remote judge; a local greedy one answers once)
_REASON_WORD = r"(hallucination|logic[ _-]error|shortcut|none)\b"
_REASON = re.compile(r"reason\W{0,3}\s*" + _REASON_WORD, re.I)
_STRICT_LINE = re.compile(r"^(?:(?:final\s+)?verdict\s*[:=-]?\s*)?(accept|reject)[.!]?$", re.I)
_LABELLED = re.compile(r"^(?:final\s+)?verdict\b", re.I)
_TOKEN = re.compile(r"\b(?:ACCEPT|REJECT)\b")  # a verdict word in capitals anywhere in a line
_MARKUP = re.compile(r"[*`#>\"'~]")
VERDICT_FORMAT = ('{"verdict": "<ACCEPT or REJECT>", "reason": "<none, hallucination, logic_error or shortcut>", '
                  '"explanation": "<one sentence>"}')


def rubric_messages(item: Mapping[str, Any], thinking: str, answer: str, description: str = "",
                    reference: str = "") -> list[dict[str, str]]:
    """The rubric prompt for one trace: what is known about the clip (``description``, ``reference`` reasoning),
    the question and key, the reasoning and its answer."""
    description = description or "(no description)"
    user = "\n".join([
        "Audit a model's reasoning about an audio clip. You cannot hear the clip; the description below is "
        "reliable and is all that is known about it.", "",
        f"Clip description:\n{description}", *([f"Reference reasoning:\n{reference}"] if reference else []), "",
        f"Question: {item['question']}", "Choices:", *[f"- {c}" for c in item["choices"]],
        f"Correct answer: {item['answer']}", "",
        f"The model's reasoning:\n{thinking[:8000]}", "", f"The model's final answer: {answer}", "",
        "Rubric. REJECT the reasoning if any of these holds:",
        "1. hallucination: it states audio content (sound events, sources, speech, words, instruments, counts, "
        "timing, loudness) that the description does not support or that contradicts it.",
        "2. logic_error: a step does not follow from the earlier ones, it contradicts itself, or its conclusion "
        "differs from the final answer.",
        "3. shortcut: it reaches the answer by guessing, or by the wording of the choices, without reasoning "
        "from what is heard.",
        "Otherwise ACCEPT.", "",
        "Answer with one JSON object on one line and nothing after it:", VERDICT_FORMAT,
        "where verdict is the single word ACCEPT or the single word REJECT, and reason is none for ACCEPT and "
        "otherwise the rubric's reason.",
    ])
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


def parse_verdict(reply: Any) -> tuple[bool, str] | None:
    """(accepted, reason label) of a judge reply, or None when its verdict is missing or ambiguous.

    The verdict is a JSON object's ``"verdict"`` or a line that is nothing but ``ACCEPT``/``REJECT`` (after an
    optional ``VERDICT:``), read after any ``</think>``. Every place that gives a verdict counts: the last one must
    be one of those two words alone, and all of them must agree; a reply still inside ``<think>`` has none. A
    rejection without one of the rubric's reasons is ``other``."""
    if not isinstance(reply, str):
        return None
    text = reply.rpartition("</think>")[2]
    if "<think>" in text:
        return None
    mentions, reasons = [], []  # (position, verdict or None when unclear), and the reasons given with JSON ones
    for start, end, obj in _json_objects(text):
        key = next((k for k in obj if isinstance(k, str) and k.lower() == "verdict"), None)
        if key is None:
            continue
        value = obj[key].strip().upper() if isinstance(obj[key], str) else None
        mentions.append((start, value if value in ("ACCEPT", "REJECT") else None))
        reasons.append(str(obj.get("reason", "")))
        text = text[:start] + re.sub(r"[^\n]", " ", text[start:end]) + text[end:]
    pos = 0
    for line in text.splitlines(keepends=True):
        clean = re.sub(r"^[-+\s]+", "", _MARKUP.sub("", line)).strip()
        strict = _STRICT_LINE.match(clean)
        if strict or _LABELLED.match(clean) or _TOKEN.search(clean):
            mentions.append((pos, strict.group(1).upper() if strict else None))
        pos += len(line)
    mentions.sort()
    given = {v for _, v in mentions if v}
    if not mentions or mentions[-1][1] is None or len(given) > 1:
        return None
    if given == {"ACCEPT"}:
        return True, "none"
    r = re.match(_REASON_WORD, reasons[-1].strip(), re.I) if reasons else _REASON.search(text)
    label = r.group(1).lower().replace(" ", "_").replace("-", "_") if r else "other"
    return False, label if label in JUDGE_REASONS else "other"


def _json_objects(text: str) -> list[tuple[int, int, dict]]:
    """(start, end, object) of each top-level JSON object written in ``text``."""
    decoder, found, i = json.JSONDecoder(), [], text.find("{")
    while i != -1:
        try:
            obj, end = decoder.raw_decode(text, i)
        except ValueError:
            i = text.find("{", i + 1)
            continue
        if isinstance(obj, dict):
            found.append((i, end, obj))
        i = text.find("{", end)
    return found


def verdict(judge: Any, messages: Messages, *, max_tokens: int, attempts: int) -> dict[str, Any]:
    """The judge's verdict on one rubric prompt as a row: ``status`` accepted, rejected or judge_failed (a call
    that failed after its retries, or ``attempts`` replies without a readable verdict), ``stage``, ``reason``."""
    reply = ""
    for run in range(attempts):
        try:
            reply = judge.complete(messages, temperature=0.0, max_tokens=max_tokens, run=run)
        except JudgeError as e:
            return {"status": "judge_failed", "stage": "judge", "reason": f"judge_failed: {e}"}
        read = parse_verdict(reply)
        if read is not None:
            accepted, label = read
            return {"status": "accepted" if accepted else "rejected", "stage": "judge",
                    "reason": None if accepted else f"judge_rejected:{label}", "judge_reply": reply[:2000]}
    return {"status": "judge_failed", "stage": "judge",
            "reason": f"judge_failed: no readable verdict in {attempts} replies (last: {reply[:80]!r})"}
