"""A stand-in for sshd's privileged child: open a session, live, close it on request.

usage: leader.py SOCKET USER [key=value ...]
Prints the OPEN answer's fields (never the token) on one line, then waits for
"close" on stdin, closes the session at the daemon and prints that answer.
"""

import sys

from slurmjwtd.client import call


def main() -> None:
    socket, user = sys.argv[1], sys.argv[2]
    extra = dict(arg.split("=", 1) for arg in sys.argv[3:])
    answer = call(socket, "OPEN", {"user": user, **extra})
    if not answer.ok:
        print(f"ERR {answer.code} {answer.message}", flush=True)
        return
    shown = {k: v for k, v in answer.fields.items() if k != "token"}
    print("OK " + " ".join(f"{k}={v}" for k, v in shown.items()), flush=True)
    if sys.stdin.readline().strip() == "close":
        closed = call(socket, "CLOSE", {"session": answer.fields["session"]})
        print("OK" if closed.ok else f"ERR {closed.code} {closed.message}", flush=True)


if __name__ == "__main__":
    main()
