"""Device backends behind one driver interface: iss, iss-process, rtl."""
