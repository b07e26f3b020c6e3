"""The lab: emulated hosts (network namespaces) joined by shaped links, so that a
migration crosses a link slower than the guest dirties memory, on one machine."""

from livemig.lab.net import Lab, lab_prefix
from livemig.lab.plan import LabHost, LabPlan, Shaping, plan_lab

__all__ = ["Lab", "LabHost", "LabPlan", "Shaping", "lab_prefix", "plan_lab"]
