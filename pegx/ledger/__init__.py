"""The ledger: every balance, deposit, withdraw and batch record, durable and exact.

Layers (imports point down only; each rule has one owner):

* ``engine``: :class:`~pegx.ledger.engine.Exchange`, the façade; ``accounts`` (trades,
  deposits, recomputes) and ``withdrawals`` (withdraws and the batch lifecycle) are its parts.
* ``core``: the state's lock, opening, commits (checked, all or nothing), checkpoints, reads.
* ``checks`` (is an operation allowed), ``state`` (the apply functions), ``checkpoint``,
  ``journal`` (op log, group commit), ``migrate`` (older layouts), ``audit`` (the law and
  every invariant).
* ``lifecycle`` (batch records, CheckWithdraw's answers, settlement), ``ops`` (the op-log
  format: the only place operations are built), ``rules`` (names, amounts, styles, messages,
  errors), ``settings`` (ExchangeSettings defaults and validation).
* ``store`` (the only plyvel user), ``schema`` (the key schema).
"""
