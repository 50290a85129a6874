"""Which ONNX op versions onnx2torch can convert, decided from onnx's own op schemas.

onnx2torch keys converters by (domain, op, since-version). Many ONNX version bumps only widen the
tensor types; the inputs, outputs and attributes stay the same. Such versions form a *type-only
run*: consecutive since-versions whose schemas have the same signature (:func:`signature`), and
a converter registered for any version of a run serves the others (a later one from the nearest
earlier registered version, an earlier one from the nearest later one).

Where a bump changed the signature, a guard (``audit.converters.guards``, one module per op)
admits the new run through an older converter and refuses, with a one-line reason, the nodes
that use what that converter does not implement. Ops onnx2torch lacks have converters in
``audit.converters.ops``. :func:`register_aliases` registers all of it once; :func:`support_table`
lists, per op version, what serves it.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import defs, numpy_helper
from onnx2torch.node_converters.registry import _CONVERTER_REGISTRY, OperationDescription, add_converter

from audit.converters import ops as _ops
from audit.converters.guards import Consts, Guard, guards


# ------------------------------------------------------------------------------------------ schemas
def signature(schema: defs.OpSchema) -> tuple:
    """Inputs and outputs (name, single/optional/variadic) and attributes (name, type, required,
    default); everything of a schema but its type constraints and documentation."""
    ins = tuple((i.name, int(i.option)) for i in schema.inputs)
    outs = tuple((o.name, int(o.option)) for o in schema.outputs)
    attrs = tuple(sorted((name, int(a.type), bool(a.required), a.default_value.SerializeToString())
                         for name, a in schema.attributes.items()))
    return ins, outs, attrs


@functools.cache
def _history(domain: str = "") -> dict[str, tuple[defs.OpSchema, ...]]:
    out: dict[str, list[defs.OpSchema]] = defaultdict(list)
    for s in defs.get_all_schemas_with_history():
        if s.domain == domain:
            out[s.name].append(s)
    return {op: tuple(sorted(ss, key=lambda s: s.since_version)) for op, ss in out.items()}


def versions(op: str, domain: str = "") -> tuple[int, ...]:
    """The since-versions of ``op`` in onnx's schemas (empty for an op onnx does not define)."""
    return tuple(s.since_version for s in _history(domain).get(op, ()))


def since_version(op: str, opset: int, domain: str = "") -> int:
    """The since-version of ``op`` in effect at ``opset``; ``opset`` itself for an op without a schema."""
    try:
        return defs.get_schema(op, max_inclusive_version=opset, domain=domain).since_version
    except Exception:
        return opset


@functools.cache
def runs(op: str, domain: str = "") -> tuple[tuple[int, ...], ...]:
    """The since-versions of ``op`` grouped into type-only runs, oldest first."""
    out: list[list[defs.OpSchema]] = []
    for s in _history(domain).get(op, ()):
        if out and signature(out[-1][-1]) == signature(s):
            out[-1].append(s)
        else:
            out.append([s])
    return tuple(tuple(s.since_version for s in r) for r in out)


def type_only(op: str, a: int, b: int, domain: str = "") -> bool:
    """Whether since-versions ``a`` and ``b`` of ``op`` lie in one type-only run."""
    return any(a in r and b in r for r in runs(op, domain))


# ------------------------------------------------------------------------------------------ registration
@dataclass(frozen=True)
class Alias:
    """A since-version served by another version's converter."""

    base: int
    guard: Guard | None = None


ALIASES: dict[OperationDescription, Alias] = {}


def _registered(op: str, domain: str = "") -> set[int]:
    return {d.version for d in _CONVERTER_REGISTRY if d.operation_type == op and d.domain == domain}


def _guarded(op: str, version: int, conv, guard: Guard | None):
    if guard is None:
        return conv

    @functools.wraps(conv)
    def wrapped(node, graph):
        def consts(name: str):
            t = graph.initializers.get(name)
            return t.to_numpy() if t is not None else None

        reason = guard.refuse(node.proto, version, consts)
        if reason:
            raise NotImplementedError(f"onnx2torch cannot convert {_label(op, version, guard.domain)} "
                                      f"(node {node.name!r}): {reason}")
        return conv(node, graph)

    return wrapped


def _plan(op: str, domain: str, have: set[int], guard: Guard | None) -> dict[int, int]:
    """since-version -> the registered version whose converter serves it, for versions without one."""
    plan: dict[int, int] = {}
    admits = dict(guard.admits) if guard else {}
    for run in runs(op, domain):
        reg = [v for v in run if v in have]
        for v in run:
            if v in have:
                continue
            lower = [r for r in reg if r < v]
            if reg:
                plan[v] = lower[-1] if lower else reg[0]
                continue
            firsts = [k for k in admits if k in run and k <= v]
            if firsts and admits[max(firsts)] in have:
                plan[v] = admits[max(firsts)]
    return plan


@functools.lru_cache(maxsize=1)
def register_aliases() -> int:
    """Register the op converters of ``audit.converters.ops`` and every alias; idempotent.

    Returns how many aliases were added.
    """
    _ops.load()
    gs = guards()
    keys = {(d.domain, d.operation_type) for d in _CONVERTER_REGISTRY} | set(gs)
    added = 0
    for domain, op in sorted(keys):
        guard = gs.get((domain, op))
        have = _registered(op, domain)
        for v, base in sorted(_plan(op, domain, have, guard).items()):
            desc = OperationDescription(domain, op, v)
            if desc in _CONVERTER_REGISTRY:
                continue
            type_only_alias = type_only(op, v, base, domain)
            conv = _CONVERTER_REGISTRY[OperationDescription(domain, op, base)]
            add_converter(operation_type=op, version=v, domain=domain)(_guarded(op, v, conv, guard))
            ALIASES[desc] = Alias(base, None if type_only_alias else guard)
            added += 1
    return added


# ------------------------------------------------------------------------------------------ checking models
def _label(op: str, version: int, domain: str = "") -> str:
    return f"{domain + ':' if domain else ''}{op}-{version}"


def _consts(model: onnx.ModelProto) -> Consts:
    inits = {t.name: t for t in model.graph.initializer}
    constants = {n.output[0]: n for n in model.graph.node if n.op_type == "Constant" and n.output}

    def get(name: str) -> np.ndarray | None:
        if name in inits:
            return numpy_helper.to_array(inits[name])
        n = constants.get(name)
        if n is not None:
            for a in n.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
                if a.name in ("value_int", "value_float", "value_ints", "value_floats"):
                    return np.asarray(onnx.helper.get_attribute_value(a))
        return None

    return get


def node_problem(node: onnx.NodeProto, opset: int, consts: Consts) -> str | None:
    """Why onnx2torch (with this package's converters) cannot convert ``node`` at ``opset``, or None."""
    register_aliases()
    dom = node.domain or ""
    since = since_version(node.op_type, opset, dom)
    where = f"{_label(node.op_type, since, dom)} (node {node.name!r})"
    if OperationDescription(dom, node.op_type, since) not in _CONVERTER_REGISTRY:
        return where
    guard = guards().get((dom, node.op_type))
    reason = guard.refuse(node, since, consts) if guard else None
    return f"{where}: {reason}" if reason else None


def missing_converters(model: onnx.ModelProto) -> list[str]:
    """The model's nodes onnx2torch cannot convert, one line each: "Op-version (node 'name')[: reason]"."""
    register_aliases()
    opsets = {o.domain or "": o.version for o in model.opset_import}
    opsets.setdefault("", opsets.get("ai.onnx", 1))
    consts = _consts(model)
    out = []
    for n in model.graph.node:
        problem = node_problem(n, opsets.get(n.domain or "", 1), consts)
        if problem:
            out.append(problem)
    return out


# ------------------------------------------------------------------------------------------ support table
@dataclass(frozen=True)
class SupportRow:
    op: str
    version: int            # ONNX since-version (for an op without a schema: the opset)
    status: str             # onnx2torch | audit | extended | alias | guarded | unsupported
    via: int | None = None  # the version whose converter serves an alias
    note: str = ""          # what a guard refuses


def support_table(domain: str = "") -> list[SupportRow]:
    """One row per since-version of every op onnx defines in ``domain`` (plus this package's
    converters for ops without a schema), saying what converts it."""
    register_aliases()
    ours = {(d.operation_type, d.version) for d in _ops.ADDED if d.domain == domain}
    extended = {(d.operation_type, d.version) for d in _ops.EXTENDED if d.domain == domain}
    rows: list[SupportRow] = []
    gs = guards()
    for op in sorted(_history(domain)):
        guard = gs.get((domain, op))
        for v in versions(op, domain):
            desc = OperationDescription(domain, op, v)
            alias = ALIASES.get(desc)
            if alias is not None and alias.guard is not None:
                rows.append(SupportRow(op, v, "guarded", alias.base, alias.guard.note))
            elif alias is not None:
                rows.append(SupportRow(op, v, "alias", alias.base, guard.note if guard else ""))
            elif (op, v) in ours:
                rows.append(SupportRow(op, v, "audit"))
            elif (op, v) in extended:
                rows.append(SupportRow(op, v, "extended", note=guard.note if guard else ""))
            elif desc in _CONVERTER_REGISTRY:
                rows.append(SupportRow(op, v, "onnx2torch", note=guard.note if guard else ""))
            else:
                rows.append(SupportRow(op, v, "unsupported"))
    for op, v in sorted(ours):
        if op not in _history(domain):
            rows.append(SupportRow(op, v, "audit"))
    return rows


def _ranges(vs: Iterable[int]) -> str:
    vs = sorted(set(vs))
    parts, start, prev = [], None, None
    for v in vs:
        if start is None:
            start = prev = v
        elif v == prev + 1:
            prev = v
        else:
            parts.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = prev = v
    if start is not None:
        parts.append(f"{start}" if start == prev else f"{start}-{prev}")
    return ", ".join(parts)


def support_markdown(domain: str = "") -> str:
    """:func:`support_table` as a Markdown list: supported ops (with the versions that are not, and
    guard conditions), partially supported ops, and unsupported ops."""
    by_op: dict[str, list[SupportRow]] = defaultdict(list)
    for r in support_table(domain):
        by_op[r.op].append(r)
    full, partial, none = [], [], []
    for op, rows in sorted(by_op.items()):
        ok = [r for r in rows if r.status != "unsupported"]
        notes = sorted({r.note for r in rows if r.note and r.status != "unsupported"})
        tag = " (" + "; ".join(notes) + ")" if notes else ""
        ours = " [audit]" if any(r.status in ("audit", "extended") for r in rows) else ""
        if not ok:
            none.append(op)
        elif len(ok) == len(rows):
            full.append(f"`{op}`{ours}{tag}")
        else:
            partial.append(f"`{op}` {_ranges(r.version for r in ok)} (not "
                           f"{_ranges(r.version for r in rows if r.status == 'unsupported')}){ours}{tag}")
    return "\n".join([
        f"- **Supported, every version** ({len(full)}): " + ", ".join(full),
        f"- **Supported, some versions** ({len(partial)}): " + ", ".join(partial),
        f"- **Not supported** ({len(none)}): " + ", ".join(f"`{o}`" for o in none),
    ])
