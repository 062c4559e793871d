BbetaJIq
?r¢S?¦.¡=:‚2>