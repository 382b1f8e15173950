"""Real-time backup: a standby daemon that holds every acknowledged call (issue #17).

Modules, leaves first: ``keys`` (the shared key file), ``wire`` (frames, HMAC authentication),
``epoch`` (the ledger's epoch record and the fence file), ``admit`` (who may follow),
``primary`` (the journal's sink: ship
and count acknowledgements), ``standby`` (follow, apply, acknowledge), ``role`` (what a standby
or a fenced primary serves), ``node`` (one daemon's replication: start, promote, fence).
README "Real-time backup: a standby" is the operator's view and lists what is and is not
guaranteed.
"""
