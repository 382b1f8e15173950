"""`pegx call METHOD ARGS...`: command-line words to the call's XML-RPC arguments.

* An argument for a parameter that takes a string (a name, address, txid, id, style or
  password: :data:`STRING_PARAMS`) is sent as the string typed, so ``pegx call GetBalance
  12345`` asks for the user "12345". Any other argument is JSON when it parses (numbers,
  lists, dicts, true/false/null), else the string; ints beyond ±2^31 go as decimal strings (a
  stock client cannot send them, and the API takes amounts as strings).
* Without a password, the arguments go exactly as given, in the API's order.
* With one (``--password`` or ``$PEGX_PASSWORD``) and a call that takes ``passw``, the
  arguments given are the call's *other* arguments, in order, and the password goes in the
  ``passw`` place; optional arguments before it that were not given get their documented
  defaults (``--password pw CheckWithdraw ID`` sends ``CheckWithdraw(ID, 0, pw)``,
  ``--password pw StartExchange 0`` sends ``StartExchange(pw, 0)``). If the arguments
  already fill every parameter, the password is among them: sent as given, but an explicit
  ``--password`` beside it is refused, as is ``--password`` for a call that takes none
  (``API``, ``devnet.*``, ``system.*``, ``pegx.noop``).

The parameters come from the daemon's own code: the API calls' from
:class:`pegx.rpc.api.PegAPI`, ``pegx.*``'s from :class:`pegx.app.App`.
"""

from __future__ import annotations

import inspect
import json

from pegx.rpc.api import PegAPI

INT32 = 2**31
# parameters whose value is a string whatever it looks like
STRING_PARAMS = frozenset({"newpassw", "passw", "xpassw", "name", "user", "user1", "user2",
                           "address", "txid", "ID", "style", "exchangefeeaccount", "dest",
                           "job_id"})


class CallArgsError(ValueError):
    """The arguments cannot be made into the call (the message says why)."""


def parse_json(text: str):
    """JSON when it parses, else the plain string; ints beyond ±2^31 as decimal strings."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    if isinstance(value, int) and not isinstance(value, bool) and not -INT32 <= value < INT32:
        return str(value)
    return value


def parameters(method: str) -> list[inspect.Parameter] | None:
    """The parameters of a call pegx serves, or None if it is not an API or pegx.* call."""
    if method in PegAPI.METHODS:
        func = getattr(PegAPI, method)
    elif method.startswith("pegx."):
        from pegx.app import App  # the pegx.* calls are the controller's methods

        func = getattr(App, method.removeprefix("pegx."), None)
        # each one's docstring starts with its wire name ("pegx.status(passw='') -> ...")
        if not callable(func) or not (inspect.getdoc(func) or "").startswith(method):
            return None
    else:
        return None
    return list(inspect.signature(func).parameters.values())[1:]  # without self


def _typed(params: list[inspect.Parameter], args: list[str]) -> list:
    """Each argument typed by the parameter in its position (JSON-or-string past the end)."""
    return [text if i < len(params) and params[i].name in STRING_PARAMS else parse_json(text)
            for i, text in enumerate(args)]


def build(method: str, args: list[str], password: str = "", source: str = "") -> list:
    """The XML-RPC arguments for ``pegx call method args...`` (rules in the module docstring).

    ``source`` is where ``password`` came from: ``"--password"``, ``"$PEGX_PASSWORD"`` or
    ``""``. Raises CallArgsError for a ``--password`` that cannot be used.
    """
    params = parameters(method)
    explicit = source == "--password"
    if params is None:
        if explicit:
            raise CallArgsError(
                f"{method} takes no password" if method.startswith(("devnet.", "system."))
                else f"{method} is not a call pegx knows: give its password among the "
                     f"arguments, in its place")
        return [parse_json(text) for text in args]
    names = [p.name for p in params]
    if "passw" not in names:
        if explicit:
            raise CallArgsError(f"{method} takes no password")
        return _typed(params, args)
    others = [p for p in params if p.name != "passw"]
    if not password or len(args) > len(others):
        if explicit and password:  # the arguments hold a password already
            raise CallArgsError(
                f"{method} takes {len(others)} argument(s) besides the password and "
                f"{len(args)} were given: give the password either with --password or "
                f"among the arguments, not both")
        return _typed(params, args)
    at = names.index("passw")
    before = others[:at]
    if any(p.default is inspect.Parameter.empty for p in before[len(args):]):
        return _typed(params, args)  # a required argument is missing: the daemon says which
    values = _typed(others, args)
    values += [p.default for p in before[len(args):]]  # optional ones up to the password
    return values[:at] + [password] + values[at:]
