"""`meshcore waypoint` freezes what start-up loaded for the cyclic garbage collector, as
`meshcore node` does: its generation-2 collections under traffic then scan only what
came later instead of the whole heap."""
from __future__ import annotations

import asyncio
import gc

from meshcore.cli import build_parser
from meshcore.waypoint.cli import options_from
from meshcore.waypoint.proxy import WaypointProxy

MESH = """\
workloads:
- {uid: c/waypoint, name: waypoint, namespace: shop, serviceAccount: waypoint, workloadIps: ["10.0.0.9"],
   protocol: HBONE}
services:
- {name: reviews, namespace: shop, hostname: reviews.shop.svc.cluster.local, vips: ["/10.96.0.1"], ports: {80: 8080},
   waypoint: {destination: "/10.0.0.9"}}
"""


def test_the_waypoint_command_freezes_its_start_up_heap_once(tmp_path):
    (tmp_path / "mesh.yaml").write_text(MESH)
    options = options_from(build_parser().parse_args(
        ["waypoint", "--name", "waypoint", "--namespace", "shop", "--config", str(tmp_path / "mesh.yaml"),
         "--state-dir", str(tmp_path / "state")]))
    assert options.freeze_startup
    options.listen = {name: None for name in options.listeners()}
    before = gc.get_freeze_count()

    async def scenario():
        proxy = await WaypointProxy(options).start()
        try:
            frozen = gc.get_freeze_count()
            await proxy.reload("test")
            return frozen, gc.get_freeze_count()
        finally:
            await proxy.drain(quiet=True)
    try:
        frozen, after_reload = asyncio.run(scenario())
    finally:
        gc.unfreeze()                # the test runner's heap is not the waypoint's
    # a reload freezes nothing more (what it replaced may leave the frozen set)
    assert frozen > before and after_reload <= frozen
