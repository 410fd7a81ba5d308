"""Attribution methods: LRP composites (heatjob.attribution.lrp)."""
