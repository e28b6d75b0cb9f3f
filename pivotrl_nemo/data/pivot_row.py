"""``PivotRow``: a typed, read-only view over one pivot-row dict (docs/contracts.md).

The JSONL format is unchanged: a pivot row stays a plain dict on disk and in memory, and a
``PivotRow`` only wraps it (no copy). Everything that reads a row's fields (rendering, the
verifiers, filtering, sampling) goes through this view, so each field is interpreted in one place.

Two reading modes, on purpose:

* rendering needs a well-formed row: ``input_items`` and ``tools`` raise ValueError (naming the
  row id) when ``responses_create_params`` is missing or the input / tool list has the wrong
  shape;
* scoring never fails on the prefix's shape: ``tool_names`` and ``prefix_calls`` skip what they
  cannot read (a row without tools offers no names; a non-object input item holds no call).
  Only a malformed ``expected_action`` is an error there (``expected``), because without it
  nothing can be scored.

The prefix's earlier calls are read by one parser, ``item_calls``, which both the prompt renderer
(``rollout.chat``) and the BFCL verifier (``domains.bfcl.verifier``) use, so the calls the policy
sees in its prompt are exactly the calls the verifier replays. It accepts both forms:

* Responses ``function_call`` items (``{"type": "function_call", "name", "arguments"}``): what
  ``data.extract`` and every BFCL row produce;
* chat-completions assistant messages carrying ``tool_calls`` (``{"role": "assistant",
  "tool_calls": [{"function": {"name", "arguments"}}]}``), as in hand-written or imported rows.

Accepting the chat form everywhere (rather than rejecting it everywhere) keeps the BFCL
verifier's replay unchanged; the renderer now shows such a message's calls as
``<tool_call>`` blocks, exactly as it renders the equivalent Responses items, where it used to
show only the message's text. Rows made of Responses items render and score as before.
"""

from __future__ import annotations

from typing import Any, Union

from pivotrl_nemo.data.actions import Action, ToolCall, action_from_expected, make_call


def item_calls(item: Any) -> list[ToolCall]:
    """The tool calls one input item makes: a Responses ``function_call`` item is one call, a
    chat-style assistant message its ``tool_calls`` (in order); anything else makes none."""
    if not isinstance(item, dict):
        return []
    if item.get("type") == "function_call":
        return [make_call(str(item.get("name", "")), item.get("arguments", "{}"))]
    tool_calls = item.get("tool_calls")
    if item.get("role") != "assistant" or not isinstance(tool_calls, list):
        return []
    calls = []
    for tc in tool_calls:
        fn = tc.get("function", tc) if isinstance(tc, dict) else None
        if isinstance(fn, dict):
            calls.append(make_call(str(fn.get("name", "")), fn.get("arguments", "{}")))
    return calls


class PivotRow:
    """A read-only view over one pivot-row dict; ``raw`` is the dict itself (never copied)."""

    __slots__ = ("_row",)

    def __init__(self, row: dict[str, Any]) -> None:
        if not isinstance(row, dict):
            raise TypeError(f"a pivot row is a JSON object (dict), got {type(row).__name__}")
        self._row = row

    @classmethod
    def of(cls, row: RowLike) -> PivotRow:
        """``row`` itself when it already is a ``PivotRow``, else a view over the dict."""
        return row if isinstance(row, PivotRow) else cls(row)

    def __repr__(self) -> str:
        return f"PivotRow({self.id!r})"

    # ------------------------------------------------------------------------------ top level

    @property
    def raw(self) -> dict[str, Any]:
        """The underlying dict (the JSONL object)."""
        return self._row

    @property
    def id(self) -> Any:
        """The row id (a string in valid rows; None when missing)."""
        return self._row.get("id")

    @property
    def metadata(self) -> dict[str, Any]:
        """``metadata``, or ``{}`` when missing or not an object."""
        meta = self._row.get("metadata")
        return meta if isinstance(meta, dict) else {}

    @property
    def env(self) -> Any:
        """``metadata.env`` (the environment description of execution-based domains), or None."""
        return self.metadata.get("env")

    @property
    def trajectory_id(self) -> Any:
        """``metadata.trajectory_id`` (rows are split by it), or None."""
        return self.metadata.get("trajectory_id")

    @property
    def profile(self) -> dict[str, Any] | None:
        """The profiling record (``k``, ``rewards``, ``mean``, ``variance``, ...), or None before profiling."""
        profile = self._row.get("profile")
        return profile if isinstance(profile, dict) else None

    # ------------------------------------------------------------------------------ expected

    @property
    def expected(self) -> Action:
        """The expected ``Action`` (ValueError on a malformed ``expected_action``: a data error)."""
        try:
            return action_from_expected(self._row["expected_action"])
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"row {self.id!r} has a malformed expected_action: {e}") from e

    @property
    def expected_type(self) -> str:
        """``expected_action.type`` as written (``function_call``, ``function_call_batch`` or
        ``message``; unlike ``expected.kind``, a one-call batch stays ``function_call_batch``)."""
        exp = self._row.get("expected_action")
        kind = exp.get("type") if isinstance(exp, dict) else None
        if not isinstance(kind, str):
            raise ValueError(f"row {self.id!r} has a malformed expected_action: no type")
        return kind

    # ------------------------------------------------------------------------------ prompt

    @property
    def params(self) -> dict[str, Any]:
        """``responses_create_params`` (ValueError when missing or not an object)."""
        params = self._row.get("responses_create_params")
        if not isinstance(params, dict):
            raise ValueError(f"row {self.id!r} has no responses_create_params")
        return params

    @property
    def input_items(self) -> list[dict[str, Any]]:
        """``responses_create_params.input`` as a list of objects; a string input is one user
        message. ValueError when it is anything else."""
        items = self.params.get("input", [])
        if isinstance(items, str):
            return [{"role": "user", "content": items}]
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise ValueError(f"row {self.id!r}: responses_create_params.input must be a list of objects")
        return items

    @property
    def tools(self) -> list[dict[str, Any]]:
        """``responses_create_params.tools`` (``[]`` when absent; ValueError when not a list)."""
        tools = self.params.get("tools") or []
        if not isinstance(tools, list):
            raise ValueError(f"row {self.id!r}: responses_create_params.tools must be a list")
        return tools

    @property
    def tool_names(self) -> set[str]:
        """Names of the tools the row offers, from the Responses form ``{name}`` or the chat form
        ``{function: {name}}``; entries without a string name are skipped (never raises)."""
        params = self._row.get("responses_create_params")
        tools = params.get("tools") if isinstance(params, dict) else None
        names: set[str] = set()
        for tool in tools if isinstance(tools, list) else []:
            if not isinstance(tool, dict):
                continue
            fn = tool.get("function")
            name = fn.get("name") if isinstance(fn, dict) else tool.get("name")
            if isinstance(name, str):
                names.add(name)
        return names

    def tool_parameters(self) -> dict[str, dict[str, Any]]:
        """Tool name -> its ``parameters`` JSON schema, for the tools that have an object one
        (Responses or chat form; anything unreadable is skipped, never raises)."""
        params = self._row.get("responses_create_params")
        tools = params.get("tools") if isinstance(params, dict) else None
        schemas: dict[str, dict[str, Any]] = {}
        for tool in tools if isinstance(tools, list) else []:
            fn = tool.get("function") if isinstance(tool, dict) else None
            spec = fn if isinstance(fn, dict) else tool
            if (
                isinstance(spec, dict)
                and isinstance(spec.get("name"), str)
                and isinstance(spec.get("parameters"), dict)
            ):
                schemas.setdefault(spec["name"], spec["parameters"])
        return schemas

    def prefix_calls(self) -> list[ToolCall]:
        """The prefix's earlier calls, in order (``item_calls`` of every input item; see the
        module doc for the accepted forms). Never raises on the input's shape."""
        params = self._row.get("responses_create_params")
        items = params.get("input") if isinstance(params, dict) else None
        if not isinstance(items, list):  # a string input is a user message: no calls
            return []
        return [call for item in items for call in item_calls(item)]


RowLike = Union[dict[str, Any], PivotRow]
"""What row-reading functions accept: the JSONL dict or a view over it."""
