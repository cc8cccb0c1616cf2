"""A seeded mutation fuzzer for the DICOM port of a running ``xray-gateway up``.

Layers, as in pynetdicom, from bytes to the campaign:

``mutate``    byte-level operators (pure): bit flips, insertions, deletions, truncation,
              length fields set to wrong or huge values, duplicated and random chunks
``pdus``      PDUs built with ``pynetdicom.pdu`` (A-ASSOCIATE-RQ, P-DATA-TF, A-RELEASE,
              A-ABORT), their length fields, and the PDU-level inputs made of them
``datasets``  the corpus (fixtures and pydicom's test files), re-encoded into every
              transfer syntax the listener accepts, and mutated Part-10 files
``wire``      one raw-socket input against the port: send, read what comes back, decide
              answered / closed / hung
``target``    what is watched on the gateway: its processes, RSS, log, index and spool
``campaign``  the driver: the input stream, the C-ECHO checks, the leftovers, the report

Every input ``i`` of seed ``s`` draws from its own ``random.Random(f"{s}:{i}")``, so any
single input can be replayed with ``--only i``.
"""
