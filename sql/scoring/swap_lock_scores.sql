-- Take the strongest lock first (DETACH needs it anyway): no lock upgrade later, so no deadlock with readers.
lock table scoring.scores in access exclusive mode
