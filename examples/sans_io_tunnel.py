"""Two in-memory HBONE endpoints exchanging a tunnel with the sans-IO core.

    python examples/sans_io_tunnel.py
"""
from meshcore import H2Connection, events


def pump(sender: H2Connection, receiver: H2Connection) -> list:
    return receiver.receive_data(sender.data_to_send())


def main() -> None:
    client, server = H2Connection(client=True), H2Connection(client=False)
    sid = client.open_tunnel("10.244.1.17:8080", [("forwarded", 'for="10.244.2.9:43872"')])
    for event in pump(client, server):
        print("server:", event)
        if isinstance(event, events.TunnelRequested):
            server.accept_tunnel(event.stream_id)
    for event in pump(server, client):
        print("client:", event)
    client.send_data(sid, b"hello through the tunnel", end_stream=True)
    for event in pump(client, server):
        print("server:", event)
        if isinstance(event, events.DataReceived):
            print("        payload:", bytes(event.data))
            server.acknowledge_received_data(event.stream_id, len(event.data))
    server.send_data(sid, b"bye", end_stream=True)
    for event in pump(server, client):
        print("client:", event)
    print("stream state:", client.stream_state(sid))


if __name__ == "__main__":
    main()
