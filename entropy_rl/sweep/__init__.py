"""Methods x seeds studies: `entropy-rl sweep` runs a grid of training runs (`runner`),
`entropy-rl compare` reports them (`compare`, with the statistics in `stats`)."""
