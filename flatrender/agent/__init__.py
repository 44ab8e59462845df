"""The simulated node agent (``flatrender agent``; ``flatrender dev --nodes N`` runs it).

Modules: ``options`` (what it can be told), ``runner`` (identities, N nodes in one nursery),
``node`` (one node's life and command dispatch), ``render`` and ``replica`` (the work), ``client``
(signed HTTP), and the pure parts ``commands``, ``work`` and ``faults``.
"""

from flatrender.agent.options import AgentOptions, OptionsError
from flatrender.agent.runner import AgentError, run_agent

__all__ = ["AgentError", "AgentOptions", "OptionsError", "run_agent"]
