"""One module per schema revision, oldest first (`nurture db history`)."""
