"""The alert engine's numba loops are compiled at start (``AlertEngine.warm_up``), not in the
middle of traffic: a compilation costs seconds of CPU, during which the evaluation thread
holds rows up (found in a whole-server profile: the spread part's loop compiled at run time,
once per width of the amounts the ring kept; later, in numba's cache of a fresh checkout,
the entity index's removal, compiled a minute into the first traffic, when the first ids
were given back)."""

from __future__ import annotations

import json
import subprocess
import sys

SCRIPT = r"""
import json
import numpy as np
from numba.core.registry import CPUDispatcher
from sluice.alerts import engine as engine_module, keyindex, pairtable, selection, window
from sluice.alerts.definition import AlertMetric, Definition, EntityType
from sluice.alerts.engine import AlertEngine
from sluice.flows.schema import Arrivals, SessionBatch, addr_bytes

def signatures():
    out = {}
    for module in (engine_module, keyindex, pairtable, selection, window):
        for name, obj in vars(module).items():
            if isinstance(obj, CPUDispatcher):
                out[f"{module.__name__}.{name}"] = sorted(str(s) for s in obj.signatures)
    for plan, kernel in selection._KERNELS.items():  # the sum pass, compiled per plan
        out[f"selection plan {plan}"] = sorted(str(s) for s in kernel.signatures)
    return out

AlertEngine.warm_up()
before = signatures()
# every metric of every entity type, byte budgets of nothing (every closed step spread) and a
# small exact limit (sketches): amounts of every width, over enough steps for spreads to leave
engine = AlertEngine(exact_limit=5, max_step_bytes=0)
definitions = []
for entity in EntityType:
    for metric in AlertMetric:
        try:
            definitions.append(Definition(id=len(definitions) + 1, user_id=1, title="t", entity=entity,
                                          metric=metric, interval="5m", threshold=10**18))
        except ValueError:  # e.g. unique hosts of a host pair
            pass
engine.set_definitions(definitions)
rng = np.random.default_rng(7)
t0 = 1_700_000_000_000
for k, scale in enumerate([1, 300, 70_000, 10**12] * 4):
    n = 200
    hosts = np.array([list(addr_bytes(f"10.{i % 5}.{i // 250}.{i % 250}")) for i in rng.integers(0, 2000, n)], np.uint8)
    servers = np.array([list(addr_bytes(f"192.0.2.{i}")) for i in rng.integers(0, 200, n)], np.uint8)
    batch = SessionBatch.build(n, session_id=np.arange(k * n, (k + 1) * n, dtype=np.uint64), cln_addr=hosts,
                               srv_addr=servers, srv_port=rng.integers(1, 2000, n).astype(np.uint16), protocol=6,
                               cln_bytes=rng.integers(1, scale + 1, n).astype(np.uint64), srv_bytes=scale,
                               cln_pkts=1, srv_pkts=scale, cln_country=b"NL", srv_country=b"US",
                               cln_asn=64512, srv_asn=rng.integers(1, 50, n).astype(np.uint32))
    engine.evaluate(batch, Arrivals(np.ones(n, bool), np.arange(k * n, (k + 1) * n)), t0 + k * 70_000)
spread = max(s.window.spread_steps() for s in engine.states.values() if hasattr(s.window, "spread_steps"))
# hours later: every window has let its entities go, and their ids are given back
engine.evaluate(SessionBatch.build(0), Arrivals(np.ones(0, bool), np.arange(0)), t0 + 10 * 3_600_000)
assert sum(len(index) for index in engine.indexes.values()) == 0
print(json.dumps({"before": before, "after": signatures(), "spread": spread}))
"""


def test_evaluation_compiles_nothing_after_the_warm_up():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["spread"] > 0  # the spread part was used
    new = {name: sorted(set(sigs) - set(result["before"].get(name, []))) for name, sigs in result["after"].items()}
    assert {name: sigs for name, sigs in new.items() if sigs} == {}
