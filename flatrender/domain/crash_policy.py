"""What to do when AfterFX crashes on a node (DESIGN §6), as one pure function of crash history.

The rules, strongest first:

1. **A node crashing repeatedly**: when this crash makes ``node_restart_after`` crashes of the
   node within the crash window (``node_crashes_in_window + 1 ≥ node_restart_after``), the node
   is told to ``RestartNode`` (reboot) and its range is requeued. Whatever the range is, the node
   is the likelier culprit.
2. **A repeat on this node**: the range already crashed on this node before; it is requeued for
   another node (``ReassignWork``).
3. **A first crash** of the range on this node: ``ResetAndRestart`` — restart AfterFX and resume
   after the last reported frame, on the same node (its rendered frames are still on its disk).
   Nothing is requeued, so no attempt is spent.

A requeue spends an attempt (the new range is ``range_attempt + 1``). When that would exceed
``max_attempts`` the job fails instead (``fail_job``, full refund, ``reason`` as its
``failed_message``) and the node is told ``ReassignWork``: drop the range, nothing was requeued.
Quarantine after consecutive failures is the node status machine's rule, not this one's.
"""

from __future__ import annotations

import attrs

from flatrender.domain.model import CrashAction


def _non_negative(_inst: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} must be ≥ 0, got {value}")


def _positive(_inst: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 1:
        raise ValueError(f"{attribute.name} must be ≥ 1, got {value}")


@attrs.frozen
class CrashHistory:
    """Counts *before* the crash being decided.

    ``node_crashes_in_window``: the node's crashes within ``[nodes] crash_window_sec``;
    ``range_crashes_on_this_node``: earlier crashes of this range (this attempt) on this node;
    ``range_attempt``: the crashed range's attempt number (1 for the first).
    """

    node_crashes_in_window: int = attrs.field(validator=_non_negative)
    range_crashes_on_this_node: int = attrs.field(validator=_non_negative)
    range_attempt: int = attrs.field(validator=_positive)


@attrs.frozen
class CrashVerdict:
    """The answer to a crash: what the node does, and what happens to the range and the job.

    ``requeue_range``: the range fails and a copy with ``attempt + 1`` is queued.
    ``fail_job``: the range exhausted its attempts; the job fails (never with a requeue).
    """

    action: CrashAction
    requeue_range: bool
    fail_job: bool
    reason: str


def decide_crash(
    history: CrashHistory, *, max_attempts: int, node_restart_after: int
) -> CrashVerdict:
    """The verdict for one crash (see the module rules).

    Raises :class:`ValueError` when ``max_attempts`` or ``node_restart_after`` is below 1.
    """
    if max_attempts < 1 or node_restart_after < 1:
        raise ValueError(
            f"max_attempts ({max_attempts}) and node_restart_after ({node_restart_after})"
            " must be ≥ 1"
        )
    node_crashes = history.node_crashes_in_window + 1
    if node_crashes >= node_restart_after:
        action = CrashAction.RESTART_NODE
        why = f"the node crashed {node_crashes} times within the crash window: reboot it"
    elif history.range_crashes_on_this_node > 0:
        action = CrashAction.REASSIGN_WORK
        why = (
            f"the range crashed {history.range_crashes_on_this_node + 1} times on this node:"
            " move it to another node"
        )
    else:
        return CrashVerdict(
            action=CrashAction.RESET_AND_RESTART,
            requeue_range=False,
            fail_job=False,
            reason="first crash of the range on this node: restart AfterFX and resume",
        )

    next_attempt = history.range_attempt + 1
    if next_attempt > max_attempts:
        return CrashVerdict(
            action=CrashAction.REASSIGN_WORK,
            requeue_range=False,
            fail_job=True,
            reason=(
                f"a frame range crashed AfterFX in {history.range_attempt} attempts"
                f" (at most {max_attempts}): the render failed"
            ),
        )
    return CrashVerdict(
        action=action,
        requeue_range=True,
        fail_job=False,
        reason=f"{why}; range requeued as attempt {next_attempt}",
    )
