"""Everything facing a person or a network: websocket server and client, pygame viewer, export, CLI.

Websocket serving (protocol: docs/protocol.md)::

    sana-wm serve --demo --port 8765                     # server.app.main; also python -m server.app
    from server.client import Client                     # sync; AsyncClient for asyncio
    with Client("ws://127.0.0.1:8765/") as c:
        s = c.start(image_bytes, "a harbour at dusk", mode="lockstep")
        out = s.step("w-24")                             # out.frames (24,H,W,3) uint8, out.c2w, out.stats

- ``server.app``: ``WorldServer`` / ``ServerThread`` (a world behind a websocket), ``ServerConfig``, ``main``.
- ``server.protocol``: message schemas and error codes; ``server.codecs``: raw / JPEG / H.264 frame payloads;
  ``server.outbox``: per-connection send queues and the slow-client policy.
- ``server.client``: ``Client``, ``AsyncClient``, ``Frames``, ``ServerError``.
- ``server.record``: session records (``Recorder``, ``load_record``, ``replay``), written by ``serve --record``
  and ``explore --record``, re-rendered by ``sana-wm replay``.
"""
