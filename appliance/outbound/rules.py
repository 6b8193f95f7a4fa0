"""Forwarding rules: which destinations a newly stored instance is queued for.

Pure logic over the ``Forwarding`` config slice: no I/O, no state. The Archive
calls a :class:`Rules` with each new instance's index record, inside its store,
and queues what it returns in the same transaction as the instance row.
"""

from __future__ import annotations

from appliance.config import ForwardingRule
from appliance.dicom.policy import same_aet
from appliance.store import Forward
from appliance.store.archive import InstanceRecord


class Rules:
    """Forwarding.Rules with StableAge: ``rules(record)`` gives the Forwards of one
    instance (one per destination and trigger, however many rules match)."""

    def __init__(self, rules: tuple[ForwardingRule, ...], stable_age: float,
                 strict_aet: bool = False) -> None:
        self._rules = rules
        self._stable_age = float(stable_age)
        self._strict = strict_aet

    def __bool__(self) -> bool:
        return bool(self._rules)

    def _matches(self, rule: ForwardingRule, record: InstanceRecord) -> bool:
        if rule.modalities and (record.modality or "").strip().upper() not in {
                m.upper() for m in rule.modalities}:
            return False
        if rule.calling_aets and not any(same_aet(a, record.calling_aet, self._strict)
                                         for a in rule.calling_aets):
            return False
        return True

    def __call__(self, record: InstanceRecord) -> tuple[Forward, ...]:
        found: dict[Forward, None] = {}
        for rule in self._rules:
            if self._matches(rule, record):
                age = self._stable_age if rule.trigger == "StableStudy" else None
                found[Forward(rule.destination, age)] = None
        return tuple(found)
