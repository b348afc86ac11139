"""The work of each phase: one module per non-terminal phase, each exposing ``step(ctx, record)``.

Modules here parse and decide with pure functions and reach the outside world only through the clients in
the `Context` they are handed. They never sleep, loop on retries or persist: the runner does that.
"""
