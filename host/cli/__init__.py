"""The command line (`softnpu`) and the demo."""
