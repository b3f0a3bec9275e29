"""gridvm site service: the Target System Factory, the UNICORE REST site, configuration."""
