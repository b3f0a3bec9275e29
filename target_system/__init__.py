"""One target system per VM instance: lifecycle, health, and jobs run through the TSI."""
