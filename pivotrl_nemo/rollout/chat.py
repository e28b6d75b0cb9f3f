"""Rendering a pivot row (docs/contracts.md) into model input ids, and training examples.

SmolLM2-style chat templates ignore ``tools=``, so the tool list goes into the system message
here: ``tool_schema_style='compact'`` writes one signature line per tool
(``mv(source: string, destination: string, overwrite?: boolean) - Move a file ...``; a BFCL
"This tool belongs to ... Tool description:" preamble is skipped and the first sentence kept,
cut to ``_DESC_CHARS``), ``'json'`` one JSON schema per line. A fixed instruction
(``TOOL_CALL_INSTRUCTION``) explains the ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``
format of ``pivotrl_nemo.data.actions``. The row's own leading system (or developer)
message comes first; without one the system message is the instruction and the tools.

Responses-API input items become chat messages:

* system / developer / user / assistant messages: as they are (content parts joined);
* ``function_call`` items: an assistant message whose content is ``render_action`` of the call;
  consecutive assistant items (calls, or text then calls) of one turn become one assistant
  message, blocks joined by newlines, exactly as the policy would emit them;
* a chat-style assistant message with ``tool_calls`` renders as its Responses items would (its
  text, if any, then its calls; ``data.pivot_row.item_calls`` reads the calls for both forms, as
  the BFCL verifier does when it replays the prefix);
* ``function_call_output`` items: a user message ``<tool_response>\\n...\\n</tool_response>``
  (SmolLM2's template has no tool role; Qwen's template renders tool messages the same way),
  the output cut to ``max_tool_output_chars`` with "..."; consecutive outputs share one message;
* ``reasoning`` items are skipped; any other item type is an error naming it.

Truncation: the system message is always kept. Of the other items the last user message (the
task) is always kept and, with it, the most recent items up to ``max_history_items`` in all
(0 = all). Then the oldest remaining messages other than that user message are dropped until the
rendered prompt has at most ``max_prompt_tokens`` tokens; the user message goes only if the
system message alone is all that fits (a warning), and a system message that alone is too long
is an error (raise ``max_prompt_tokens`` or use the compact tool style).

The prompt is ``tokenizer.apply_chat_template(messages, add_generation_prompt=True,
tokenize=False)`` tokenized without extra special tokens, so the real template is honoured. A
training example is built by concatenating ids (prompt ids + action ids + the end-of-turn id), so
the prompt the sampler saw is an exact prefix of what the trainer scores.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pivotrl_nemo.config.schema import DataConfig
from pivotrl_nemo.data.actions import Action, ToolCall, render_action
from pivotrl_nemo.data.pivot_row import PivotRow, RowLike, item_calls
from pivotrl_nemo.utils.logging import get_logger

if TYPE_CHECKING:  # annotations only: rendering messages needs no transformers
    from transformers import PreTrainedTokenizerBase

logger = get_logger(__name__)

TOOL_CALL_INSTRUCTION = (
    "You can call the tools listed below. To call a tool, reply with\n"
    '<tool_call>{"name": "<tool name>", "arguments": {<arguments as a JSON object>}}</tool_call>\n'
    "and nothing else; write one such block per call when several calls are needed at once. "
    "Tool results come back inside <tool_response></tool_response>. "
    "When no tool is needed, reply to the user in plain text."
)
DEFAULT_SYSTEM = "You are a helpful assistant."
_DESC_CHARS = 100
_ELLIPSIS = "..."
_TOOL_STYLES = ("compact", "signature", "json")


@dataclass
class _Msg:
    role: str
    content: str
    kind: str  # "system", "user", "assistant", "tool" (a tool response rendered as a user message)


# ----------------------------------------------------------------------------------------- tools


def _tool_function(tool: dict[str, Any]) -> dict[str, Any]:
    """A tool as {name, description, parameters}, from the Responses or the chat-completions form."""
    fn = tool.get("function")
    if not isinstance(fn, dict):  # the Responses form: the tool object is the function
        fn = tool
    name = fn.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"tool without a name: {json.dumps(tool)[:120]}")
    params = fn.get("parameters")
    return {
        "name": name,
        "description": str(fn.get("description") or ""),
        "parameters": params if isinstance(params, dict) else {},
    }


def _type_str(schema: Any) -> str:
    if not isinstance(schema, dict):
        return "any"
    t = schema.get("type")
    if isinstance(t, list):
        return "|".join(str(x) for x in t)
    if t == "array" and isinstance(schema.get("items"), dict) and schema["items"].get("type"):
        return f"array[{_type_str(schema['items'])}]"
    if t is None and isinstance(schema.get("anyOf"), list):
        return "|".join(_type_str(s) for s in schema["anyOf"])
    return str(t) if t else "any"


def short_description(description: str, limit: int = _DESC_CHARS) -> str:
    """The first sentence of a tool description (after a BFCL preamble), cut to ``limit`` chars."""
    text = description
    if "Tool description:" in text:
        text = text.split("Tool description:")[-1]
    text = " ".join(text.split())
    m = re.match(r"(.+?[.!?])(?:\s|$)", text)
    if m:
        text = m.group(1)
    if len(text) > limit:
        text = text[: max(0, limit - len(_ELLIPSIS))].rstrip() + _ELLIPSIS
    return text


def compact_signature(tool: dict[str, Any], with_description: bool = True) -> str:
    """``name(a: string, b?: integer) - first sentence`` for one tool (no description part when
    ``with_description`` is False: the 'signature' style, for small models and short prompts)."""
    fn = _tool_function(tool)
    params = fn["parameters"]
    props = params.get("properties") if isinstance(params.get("properties"), dict) else {}
    required = set(params.get("required") or [])
    args = ", ".join(f"{p}{'' if p in required else '?'}: {_type_str(s)}" for p, s in props.items())
    desc = short_description(fn["description"]) if with_description else ""
    return f"{fn['name']}({args})" + (f" - {desc}" if desc else "")


_RENDERED_TOOLS: dict[tuple[int, str], tuple[list[dict[str, Any]], str]] = {}
_RENDERED_TOOLS_MAX = 256


def render_tools(tools: list[dict[str, Any]], style: str) -> str:
    """The tool list as it appears in the system message (one line per tool). Cached per list
    object: ``data.row_store`` shares one parsed list among all rows that carry it, so a task's
    tools are rendered once (the entry holds the list, so its id cannot be reused meanwhile)."""
    hit = _RENDERED_TOOLS.get((id(tools), style))
    if hit is not None and hit[0] is tools:
        return hit[1]
    text = _render_tools(tools, style)
    if len(_RENDERED_TOOLS) >= _RENDERED_TOOLS_MAX:
        _RENDERED_TOOLS.clear()
    _RENDERED_TOOLS[(id(tools), style)] = (tools, text)
    return text


def _render_tools(tools: list[dict[str, Any]], style: str) -> str:
    if style in ("compact", "signature"):
        return "\n".join(compact_signature(t, style == "compact") for t in tools)
    if style == "json":
        return "\n".join(json.dumps(_tool_function(t), ensure_ascii=False) for t in tools)
    raise ValueError(f"data.tool_schema_style must be one of {_TOOL_STYLES}, got {style!r}")


def system_prompt(base: str | None, tools: list[dict[str, Any]], style: str) -> str:
    """The full system message: the row's own system text, the call-format instruction, the tools."""
    parts = [base.strip()] if base and base.strip() else []
    if tools:
        parts.append(TOOL_CALL_INSTRUCTION)
        parts.append("Tools:\n" + render_tools(tools, style))
    return "\n\n".join(parts) if parts else DEFAULT_SYSTEM


# ----------------------------------------------------------------------------------------- items


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                texts.append(part["text"])
            else:
                raise ValueError(f"unsupported message content part: {json.dumps(part)[:120]}")
        return "".join(texts)
    raise ValueError(f"unsupported message content of type {type(content).__name__}")


def _item_kind(item: dict[str, Any]) -> str:
    """'system', 'user', 'assistant', 'call', 'output' or 'skip'."""
    t = item.get("type")
    if t == "function_call":
        return "call"
    if t == "function_call_output":
        return "output"
    if t == "reasoning":
        return "skip"
    if t in (None, "message") and "role" in item:
        role = item["role"]
        if role in ("system", "developer"):
            return "system"
        if role in ("user", "assistant"):
            return role
        raise ValueError(f"unsupported message role {role!r}")
    raise ValueError(f"unsupported input item type {t!r}")


def _cut(text: str, limit: int) -> str:
    if limit > 0 and len(text) > limit:
        return text[:limit] + _ELLIPSIS
    return text


def _output_text(output: Any) -> str:
    if isinstance(output, str):
        return output
    if isinstance(output, list):  # Responses content parts
        return _content_text(output)
    return json.dumps(output, ensure_ascii=False)


def _call_text(calls: list[ToolCall]) -> str:
    return render_action(Action("function_call" if len(calls) == 1 else "function_call_batch", tuple(calls)))


def _items_to_messages(items: list[dict[str, Any]], max_tool_output_chars: int) -> list[_Msg]:
    """Convert (non-leading-system) input items into chat messages, merging one turn's items."""
    out: list[_Msg] = []
    calls: list[ToolCall] = []
    call_prefix: str | None = None  # assistant text of the same turn that precedes the calls

    def flush_calls() -> None:
        nonlocal calls, call_prefix
        if calls:
            text = _call_text(calls)
            if call_prefix:
                text = call_prefix + "\n" + text
            out.append(_Msg("assistant", text, "assistant"))
        elif call_prefix is not None:
            out.append(_Msg("assistant", call_prefix, "assistant"))
        calls, call_prefix = [], None

    for item in items:
        kind = _item_kind(item)
        if kind == "skip":
            continue
        if kind == "call":
            calls.extend(item_calls(item))
            continue
        if kind == "assistant":
            text = _content_text(item.get("content"))
            chat_calls = item_calls(item)  # a chat-style message's tool_calls
            if chat_calls and not text:  # its Responses form is the call items alone
                calls.extend(chat_calls)
                continue
            flush_calls()
            call_prefix = text
            calls.extend(chat_calls)
            continue
        flush_calls()
        if kind == "output":
            output = _cut(_output_text(item.get("output", "")), max_tool_output_chars)
            block = "<tool_response>\n" + output + "\n</tool_response>"
            if out and out[-1].kind == "tool":
                out[-1].content += "\n" + block
            else:
                out.append(_Msg("user", block, "tool"))
        else:
            out.append(_Msg(kind, _content_text(item.get("content")), kind))
    flush_calls()
    return out


def _last_user_index(msgs: list[_Msg]) -> int | None:
    for i in range(len(msgs) - 1, -1, -1):
        if msgs[i].kind == "user":
            return i
    return None


def _split_system(row: PivotRow, data_cfg: DataConfig) -> tuple[_Msg, list[_Msg]]:
    """The system message (with tools) and the other messages after the history-item limit."""
    items, tools = row.input_items, row.tools
    base_parts: list[str] = []
    start = 0
    while start < len(items) and _item_kind(items[start]) == "system":
        base_parts.append(_content_text(items[start].get("content")))
        start += 1
    rest = items[start:]
    limit = data_cfg.max_history_items
    if limit > 0 and len(rest) > limit:
        kinds = [_item_kind(i) for i in rest]
        user_positions = [i for i, k in enumerate(kinds) if k == "user"]
        keep = set(range(len(rest) - limit, len(rest)))
        if user_positions and user_positions[-1] not in keep:
            keep = {user_positions[-1]} | set(range(len(rest) - limit + 1, len(rest)))
        rest = [it for i, it in enumerate(rest) if i in keep]
    system = _Msg("system", system_prompt("\n\n".join(base_parts), tools, data_cfg.tool_schema_style), "system")
    return system, _items_to_messages(rest, data_cfg.max_tool_output_chars)


def _as_dicts(system: _Msg, msgs: list[_Msg]) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in [system, *msgs]]


def _prompt_ids(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> list[int]:
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _fit_to_budget(
    system: _Msg, msgs: list[_Msg], tokenizer: PreTrainedTokenizerBase, max_tokens: int, row_id: Any
) -> tuple[list[dict[str, str]], list[int]]:
    """Drop the oldest messages (the last user message last) until the prompt fits; see module doc."""
    protected = _last_user_index(msgs)
    drop_order = [i for i in range(len(msgs)) if i != protected]

    def render(k: int, drop_protected: bool = False) -> tuple[list[dict[str, str]], list[int]]:
        dropped = set(drop_order[:k])
        if drop_protected and protected is not None:
            dropped.add(protected)
        kept = [m for i, m in enumerate(msgs) if i not in dropped]
        messages = _as_dicts(system, kept)
        return messages, _prompt_ids(tokenizer, messages)

    best = render(0)
    if max_tokens <= 0 or len(best[1]) <= max_tokens:
        return best
    # The prompt length only shrinks as more messages go: binary-search the fewest drops.
    lo, hi = 1, len(drop_order)
    found = None
    while lo <= hi:
        mid = (lo + hi) // 2
        cand = render(mid)
        if len(cand[1]) <= max_tokens:
            found, hi = cand, mid - 1
        else:
            lo = mid + 1
    if found is not None:
        return found
    if protected is not None:
        cand = render(len(drop_order), drop_protected=True)
        if len(cand[1]) <= max_tokens:
            logger.warning(
                "row %r: the last user message does not fit in max_prompt_tokens=%d next to the system "
                "message; it was dropped",
                row_id,
                max_tokens,
            )
            return cand
    n_system = len(_prompt_ids(tokenizer, _as_dicts(system, [])))
    raise ValueError(
        f"row {row_id!r}: the system message with the tool list alone takes {n_system} tokens, more than "
        f"data.max_prompt_tokens={max_tokens}; raise it or use data.tool_schema_style=signature"
    )


# ------------------------------------------------------------------------------------------- API


def render_messages(
    row: RowLike, data_cfg: DataConfig, tokenizer: PreTrainedTokenizerBase | None = None
) -> list[dict[str, str]]:
    """The chat messages for a pivot row (system with tools first). Without a tokenizer only the
    ``max_history_items`` limit applies; with one, also the ``max_prompt_tokens`` budget."""
    view = PivotRow.of(row)
    system, msgs = _split_system(view, data_cfg)
    if tokenizer is None:
        return _as_dicts(system, msgs)
    return _fit_to_budget(system, msgs, tokenizer, data_cfg.max_prompt_tokens, view.id)[0]


def render_prompt_ids(row: RowLike, tokenizer: PreTrainedTokenizerBase, data_cfg: DataConfig) -> list[int]:
    """Token ids of the row's prompt, ending with the template's assistant generation prompt."""
    view = PivotRow.of(row)
    system, msgs = _split_system(view, data_cfg)
    return _fit_to_budget(system, msgs, tokenizer, data_cfg.max_prompt_tokens, view.id)[1]


def action_token_ids(action_text: str, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Ids of an action's text as the policy would emit it (no special tokens added)."""
    return list(tokenizer(action_text, add_special_tokens=False)["input_ids"])


def render_training_example(
    row: RowLike, action_text: str, tokenizer: PreTrainedTokenizerBase, data_cfg: DataConfig
) -> tuple[list[int], list[int]]:
    """(ids, loss_mask) for prompt + action + end-of-turn; the mask is 1 exactly on the action
    tokens and the end-of-turn token. Built by concatenating ids, so ``render_prompt_ids(row)``
    is an exact prefix of ``ids``."""
    from pivotrl_nemo.data.tokenizer import end_of_turn_token_ids  # heavy: imports transformers

    prompt = render_prompt_ids(row, tokenizer, data_cfg)
    action = action_token_ids(action_text, tokenizer)
    eot = end_of_turn_token_ids(tokenizer)[0]
    ids = prompt + action + [eot]
    mask = [0] * len(prompt) + [1] * (len(action) + 1)
    return ids, mask
