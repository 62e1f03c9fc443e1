"""terminado 0.18 on tornado, as bench-gateway's peer: one new
`bash --norc --noprofile` per WebSocket at /websocket, on 127.0.0.1:PORT
(the first argument). Prints `listening` once it accepts connections."""

import asyncio
import sys

import tornado.web
from terminado import TermSocket, UniqueTermManager


async def main(port: int) -> None:
    manager = UniqueTermManager(shell_command=["bash", "--norc", "--noprofile"])
    app = tornado.web.Application(
        [(r"/websocket", TermSocket, {"term_manager": manager})]
    )
    app.listen(port, address="127.0.0.1")
    print("listening", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
