"""Private implementation of jaxnorm. Import public names from :mod:`jaxnorm`."""
