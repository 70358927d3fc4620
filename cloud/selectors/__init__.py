"""The read side: queries the interfaces show (``queries``), the console log off
disk (``console``) and the metrics charts (``charts``).  Nothing here writes."""
