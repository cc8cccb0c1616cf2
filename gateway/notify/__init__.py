"""Alerts that reach people: signed webhooks and syslog (IHE ATNA), through a durable outbox.

``events`` turns an alert into an event with a stable id (pure); ``signing`` signs and
checks it the Standard Webhooks way (pure); ``atna`` writes the RFC 5424 message and its
IHE ATNA ``AuditMessage`` (pure); ``senders`` puts one event on the wire (httpx, sockets);
``outbox`` keeps events in the index until each target took them; ``notifier`` is the
loop ``up`` starts.
"""
