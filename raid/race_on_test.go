//go:build race

package raid

// raceOn: the race detector makes the model tests about ten times slower;
// they run fewer seeds by default (make soak runs many more without it).
const raceOn = true
