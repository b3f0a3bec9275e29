"""Fakes of the parts below a target system, for unit tests of the cores that boot no VM
(in the spirit of buildbot's ``test/fake``): ``hypervisor.FakeVirtualMachines`` boots on a
``task.Clock``, ``tsi.FakeTSINetwork`` connects to in-memory agents, ``parts.FakeParts``
puts both on one clock.  End-to-end tests use the real parts."""
