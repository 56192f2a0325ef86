"""End-to-end benches on the reference runtime and server: `fuseinfer bench offline`,
`bench latency` and `bench serving`. They sit above runtime/ and server/, which import
nothing from here."""
